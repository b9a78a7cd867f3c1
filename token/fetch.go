package token

// Calling the Fetcher: bounded by its context whatever it does, panics
// contained, and what it returns validated.

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
)

// fetch calls the Fetcher but returns when ctx is done even if the Fetcher
// does not honour it. Such a Fetcher's goroutine ends only when it returns,
// possibly after Close.
func (s *Source) fetch(ctx context.Context) (Token, error) {
	type result struct {
		tok Token
		err error
	}
	ch := make(chan result, 1)
	go func() {
		returned := false
		defer func() {
			if returned {
				return
			}
			// A panic, or runtime.Goexit (recover returns nil). The stack
			// says where; the panic value may hold anything, so only its
			// type is logged.
			p := recover()
			s.log.Error("tokencache: fetcher panicked", slog.String("panic_type", fmt.Sprintf("%T", p)),
				slog.String("stack", string(debug.Stack())))
			ch <- result{err: fmt.Errorf("%w (%T)", ErrFetcherPanic, p)}
		}()
		tok, err := s.fetcher.Fetch(ctx)
		returned = true
		ch <- result{tok, redactErr(err)}
	}()
	select {
	case r := <-ch:
		return r.tok, r.err
	case <-ctx.Done():
		select {
		case r := <-ch: // an answer that came with the deadline still counts
			return r.tok, r.err
		default:
			return Token{}, context.Cause(ctx)
		}
	}
}

// accept validates a fetched token and returns it as the Shared to save
// with version.
func (s *Source) accept(tok Token, version int64) (Shared, error) {
	now := s.opts.Now()
	switch {
	case tok.Value == "" || !tok.ExpiresAt.After(now):
		return Shared{}, fmt.Errorf("fetcher returned %v: %w", tok, ErrInvalidToken)
	case len(tok.Value) > MaxTokenLen:
		return Shared{}, fmt.Errorf("%w: %d bytes", ErrTokenTooLarge, len(tok.Value))
	}
	ttl := tok.ExpiresAt.Sub(now)
	return Shared{Value: tok.Value, Version: version, TTL: ttl, Lifetime: ttl, Identity: s.accountFP}, nil
}
