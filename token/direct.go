package token

// The direct fetch: Options.FetchWhenStoreDown.

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// pending is a token fetched while the store was unavailable, kept to offer
// the store when it answers again.
type pending struct {
	mu  sync.Mutex // guards tok and deadline
	tok Shared     // Version 0; Value "" if none
	// deadline is the token's expiry on the monotonic clock.
	deadline time.Time
}

func (p *pending) set(sh Shared, deadline time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tok, p.deadline = sh, deadline
}

// take returns the pending token and forgets it.
func (p *pending) take() (Shared, time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	sh, deadline := p.tok, p.deadline
	p.tok, p.deadline = Shared{}, time.Time{}
	return sh, deadline, sh.Value != ""
}

// drop forgets the pending token, or only the one with value bad if bad is
// not "".
func (p *pending) drop(bad string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bad == "" || p.tok.Value == bad {
		p.tok, p.deadline = Shared{}, time.Time{}
	}
}

// fetchDirect fetches without the store (Options.FetchWhenStoreDown), and
// keeps the token to offer the store when it answers again.
func (s *Source) fetchDirect() (*entry, error) {
	ctx, cancel := context.WithTimeout(s.life.ctx, s.opts.FetchTimeout)
	defer cancel()
	if h := s.opts.Hooks.FetchStart; h != nil {
		h(FetchStartInfo{Credential: s.name, Reason: ReasonMissing})
	}
	start := time.Now()
	f, err := s.fetch(context.WithValue(ctx, reasonKey{}, ReasonMissing), ctx)
	var sh Shared
	if err == nil {
		sh, err = s.accept(f.tok, 0)
	}
	s.opts.Hooks.fetchDone(s.name, ReasonMissing, time.Since(start), false, err)
	if err != nil {
		err = fmt.Errorf("token: %s: fetch while the store is unavailable: %w", s.name, err)
		// Without the store the backoff is this instance's own.
		return nil, s.gate.directFailed(err, s.opts.BackoffPolicy)
	}
	e := s.install(sh, 0)
	s.pending.set(sh, e.deadline)
	s.gate.directOK()
	s.log.Warn("tokencache: fetched a token directly while the shared store is unavailable")
	return e, nil
}
