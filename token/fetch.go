package token

// Calling the Fetcher: bounded by its context whatever it does, panics
// contained, and what it returns validated.

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
)

// fetched is what a fetch returned: a token, and for a Redeemer, the refresh
// state to commit before the token is shared (nil if it did not rotate).
type fetched struct {
	tok Token
	rot *rotated
}

// fetch calls the Fetcher (or redeems, see obtain) but returns when ctx is
// done even if the Fetcher does not honour it. Such a Fetcher's goroutine
// ends only when it returns, possibly after Close.
func (s *Source) fetch(ctx, lctx context.Context) (fetched, error) {
	type result struct {
		f   fetched
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
		f, err := s.obtain(ctx, lctx)
		returned = true
		ch <- result{f, redactErr(err)}
	}()
	select {
	case r := <-ch:
		return r.f, r.err
	case <-ctx.Done():
		select {
		case r := <-ch: // an answer that came with the deadline still counts
			return r.f, r.err
		default:
			return fetched{}, context.Cause(ctx)
		}
	}
}

// obtain calls the Fetcher, or redeems a Redeemer's refresh state under
// the lock lctx is bound to.
func (s *Source) obtain(ctx, lctx context.Context) (fetched, error) {
	if s.rot != nil {
		return s.rot.redeem(ctx, lctx)
	}
	tok, err := s.fetcher.Fetch(ctx)
	return fetched{tok: tok}, err
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
