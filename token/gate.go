package token

// The gate: every "not yet" a Source obeys without I/O (a known shared
// backoff, a failing store until RetryInterval ends, failed fetches without
// the store) and the cap on fetches per lifetime.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// gate is the one place that decides "not yet" without I/O: after a
// failed refresh, until RetryInterval has passed; while a shared backoff
// this instance knows of lasts; after failed fetches without the store; and
// when too many tokens were fetched within one lifetime (fetches).
type gate struct {
	retry time.Duration // Options.RetryInterval; write-once

	mu      sync.Mutex // guards the fields up to resets
	retryAt time.Time  // no refresh starts before this
	// failErr is what callers with no valid token get until retryAt, after
	// a store failure or an identity mismatch, without asking the store.
	failErr error
	backoff knownBackoff
	checked time.Time // when the shared backoff record was last re-read
	// directFailures counts failed fetches without the store in a row.
	directFailures int
	// reported is whether Hooks.Backoff last said a backoff was active.
	reported bool

	// resets counts ResetBackoff calls: a refresh ignores a backoff record
	// it read across one.
	resets  atomic.Int64
	fetches fetchLog
}

// knownBackoff is a shared backoff this instance knows of: until it ends,
// callers with no valid token get a BackoffError without asking the store.
type knownBackoff struct {
	until time.Time
	rec   SharedBackoff
	cause error // the failure, if this instance saw it
}

// mayRetry reports whether a refresh may start: no failed refresh within
// RetryInterval and no known shared backoff.
func (g *gate) mayRetry() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	return now.After(g.retryAt) && now.After(g.backoff.until)
}

// notYet returns the error a caller with no valid token gets without any
// I/O: the shared backoff while it lasts, and the store's last error until
// the retry interval after a store failure ends.
func (g *gate) notYet() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	switch {
	case now.Before(g.backoff.until):
		return g.backoffErrLocked(now)
	case g.failErr != nil && now.Before(g.retryAt):
		return g.failErr
	}
	return nil
}

// finished records the end of a refresh. A failure delays the next by
// RetryInterval; a sticky one is also what callers get meanwhile.
func (g *gate) finished(err error, sticky bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failErr = nil
	if err != nil {
		g.retryAt = time.Now().Add(g.retry)
		if sticky {
			g.failErr = err
		}
	}
}

// recheckDue reports whether the shared backoff record may be re-read now
// (once per RetryInterval), and if so counts this as the re-read.
func (g *gate) recheckDue() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.checked) < g.retry {
		return false
	}
	g.checked = time.Now()
	return true
}

// backingOff remembers a shared backoff and returns its error. cause is the
// failure, if this instance saw it.
func (g *gate) backingOff(b SharedBackoff, cause error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	g.backoff = knownBackoff{until: now.Add(b.Remaining), rec: b, cause: cause}
	return g.backoffErrLocked(now)
}

// backoffErrLocked is the error of the known backoff, with the time
// actually left at now.
func (g *gate) backoffErrLocked(now time.Time) error {
	b := g.backoff
	return &BackoffError{Failures: b.rec.Failures, Remaining: b.until.Sub(now), Class: b.rec.Class, Code: b.rec.Code, cause: b.cause}
}

// backoffChanged reports whether a backoff started or ended since it was
// last asked, and the record of the one that is (or was) active.
// A closed Source has none.
func (g *gate) backoffChanged(closed bool) (changed, active bool, rec SharedBackoff) {
	g.mu.Lock()
	defer g.mu.Unlock()
	active = !closed && time.Now().Before(g.backoff.until)
	if active == g.reported {
		return false, active, rec
	}
	g.reported = active
	return true, active, g.backoff.rec
}

// reportBackoff calls Hooks.Backoff if a backoff started or ended. Backoffs
// start and end inside refreshes and on events; they are reported after a
// refresh, when a caller looks, and at Close, never from the dispatch.
func (s *Source) reportBackoff() {
	h := s.opts.Hooks.Backoff
	if h == nil {
		return
	}
	if changed, active, rec := s.gate.backoffChanged(s.life.ctx.Err() != nil); changed {
		h(BackoffInfo{Credential: s.name, Active: active, Class: rec.Class, Code: rec.Code})
	}
}

// endBackoff forgets the known backoff.
func (g *gate) endBackoff() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.backoff = knownBackoff{}
}

// open forgets every reason not to refresh but the fetch cap: a token was
// saved, by this instance or another.
func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.backoff, g.failErr = knownBackoff{}, nil
}

// reset forgets every reason not to refresh (ResetBackoff).
func (g *gate) reset() {
	g.resets.Add(1)
	g.mu.Lock()
	g.backoff, g.retryAt, g.failErr = knownBackoff{}, time.Time{}, nil
	g.mu.Unlock()
	g.fetches.reset()
}

// directFailed counts a failed fetch without the store and backs off by
// policy; without the store the backoff is this instance's own.
func (g *gate) directFailed(err error, policy func(error, int) time.Duration) error {
	g.mu.Lock()
	g.directFailures++
	n := g.directFailures
	g.mu.Unlock()
	class, code := Classify(err)
	g.backingOff(SharedBackoff{Failures: n, Remaining: policy(err, n), Class: class, Code: code}, err)
	return err
}

// directOK ends the run of failed fetches without the store.
func (g *gate) directOK() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.directFailures = 0
}

// backoffEnded re-reads the shared backoff record behind err, at most once
// per RetryInterval, and reports whether it has ended: another instance's
// ResetBackoff, or a save, ends it everywhere.
func (s *Source) backoffEnded(ctx context.Context, err error) bool {
	var be *BackoffError
	if !errors.As(err, &be) || !s.gate.recheckDue() {
		return false
	}
	b, lerr := s.store.LoadBackoff(ctx)
	if lerr != nil || (b.Remaining > 0 && s.binds(b)) {
		return false
	}
	s.gate.endBackoff()
	s.reportBackoff()
	return true
}

// binds reports whether backoff b, recorded by some instance, holds this
// Source back: one recorded by a Fetcher of another identity does not.
func (s *Source) binds(b SharedBackoff) bool {
	return b.Identity == "" || s.fetcherFP == "" || b.Identity == s.fetcherFP
}

// ResetBackoff ends the shared backoff of this credential on every
// instance, e.g. after a wrong secret was fixed: the next Token that needs a
// token fetches at once. A backoff recorded by a Fetcher of another identity
// does not apply anyway.
func (s *Source) ResetBackoff(ctx context.Context) error {
	if err := s.store.SaveBackoff(ctx, SharedBackoff{}); err != nil {
		return fmt.Errorf("token: %s: reset backoff: %w", s.name, err)
	}
	s.gate.reset()
	s.reportBackoff()
	return nil
}

// fetchLog remembers when the last MaxFetchesPerLifetime fetches started.
type fetchLog struct {
	mu   sync.Mutex // guards at and next
	at   [MaxFetchesPerLifetime]time.Time
	next int // index of the oldest
}

// reset forgets every fetch.
func (l *fetchLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at, l.next = [MaxFetchesPerLifetime]time.Time{}, 0
}

func (l *fetchLog) add(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at[l.next] = t
	l.next = (l.next + 1) % len(l.at)
}

// maxFetchWindow caps the window MaxFetchesPerLifetime counts in, so that
// long-lived tokens never make a Source wait longer.
const maxFetchWindow = 10 * time.Minute

// wait returns how long to wait before another fetch so that no more than
// MaxFetchesPerLifetime tokens are fetched within one lifetime (at most
// maxFetchWindow): 0 if one may be fetched now.
func (l *fetchLog) wait(now time.Time, lifetime time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	window := min(lifetime, maxFetchWindow)
	oldest := l.at[l.next]
	if oldest.IsZero() || now.Sub(oldest) >= window {
		return 0
	}
	return oldest.Add(window).Sub(now)
}
