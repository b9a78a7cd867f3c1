package token

// The direct fetch: Options.FetchWhenStoreDown.

import (
	"context"
	"fmt"
	"time"
)

// pending is a token fetched while the store was unavailable.
type pending struct {
	tok      Shared // Version 0
	deadline time.Time
}

func (s *Source) takePending() *pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending
	s.pending = nil
	return p
}

// fetchDirect fetches without the store (Options.FetchWhenStoreDown), and
// keeps the token to offer the store when it answers again.
func (s *Source) fetchDirect() (*entry, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.FetchTimeout)
	defer cancel()
	tok, err := s.fetch(context.WithValue(ctx, reasonKey{}, ReasonMissing))
	if err == nil {
		err = s.check(tok)
	}
	if err != nil {
		err = fmt.Errorf("token: %s: fetch while the store is unavailable: %w", s.name, err)
		// Without the store the backoff is this instance's own.
		s.mu.Lock()
		s.directFailures++
		n := s.directFailures
		s.mu.Unlock()
		class, code := Classify(err)
		s.backingOff(SharedBackoff{Failures: n, Remaining: s.opts.BackoffPolicy(err, n), Class: class, Code: code}, err)
		return nil, err
	}
	ttl := tok.ExpiresAt.Sub(s.opts.Now())
	sh := Shared{Value: tok.Value, TTL: ttl, Lifetime: ttl}
	e := s.install(sh, 0)
	s.mu.Lock()
	s.pending = &pending{tok: sh, deadline: e.deadline}
	s.directFailures = 0
	s.mu.Unlock()
	s.log.Warn("tokencache: fetched a token directly while the shared store is unavailable")
	return e, nil
}
