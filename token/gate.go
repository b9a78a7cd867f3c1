package token

// The gate: every "not yet" a Source obeys without I/O (Close, a known
// shared backoff, a failing store until RetryInterval ends) and the cap on
// fetches per lifetime.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// mayRetry reports whether a refresh may start: no failed refresh within
// RetryInterval and no known shared backoff.
func (s *Source) mayRetry() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	return now.After(s.retryAt) && now.After(s.backoffUntil)
}

// notYet returns the error a caller with no valid token gets without any
// I/O: ErrClosed after Close, the shared backoff while it lasts, and the
// store's last error until the retry interval after a store failure ends.
func (s *Source) notYet() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	switch {
	case s.closed:
		return ErrClosed
	case now.Before(s.backoffUntil):
		return s.backoffErrLocked(now)
	case s.failErr != nil && now.Before(s.retryAt):
		return s.failErr
	}
	return nil
}

// backoffEnded re-reads the shared backoff record behind err, at most once
// per RetryInterval, and reports whether it has ended: another instance's
// ResetBackoff, or a save, ends it everywhere.
func (s *Source) backoffEnded(ctx context.Context, err error) bool {
	var be *BackoffError
	if !errors.As(err, &be) {
		return false
	}
	s.mu.Lock()
	due := time.Since(s.backoffChecked) >= s.opts.RetryInterval
	if due {
		s.backoffChecked = time.Now()
	}
	s.mu.Unlock()
	if !due {
		return false
	}
	b, lerr := s.store.LoadBackoff(ctx)
	if lerr != nil || (b.Remaining > 0 && (b.Identity == "" || s.fetcherFP == "" || b.Identity == s.fetcherFP)) {
		return false
	}
	s.mu.Lock()
	s.endBackoffLocked()
	s.mu.Unlock()
	return true
}

// backingOff remembers a shared backoff, so that callers fail fast without
// asking Redis until it ends, and returns its error. cause is the failure,
// if this instance saw it.
func (s *Source) backingOff(b SharedBackoff, cause error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backoff, s.backoffCause = b, cause
	s.backoffUntil = time.Now().Add(b.Remaining)
	return s.backoffErrLocked(time.Now())
}

// backoffErrLocked is the error of the known backoff, with the time
// actually left at now.
func (s *Source) backoffErrLocked(now time.Time) error {
	b := s.backoff
	return &BackoffError{Failures: b.Failures, Remaining: s.backoffUntil.Sub(now), Class: b.Class, Code: b.Code, cause: s.backoffCause}
}

// endBackoffLocked forgets the known backoff.
func (s *Source) endBackoffLocked() {
	s.backoffUntil, s.backoff, s.backoffCause = time.Time{}, SharedBackoff{}, nil
}

// ResetBackoff ends the shared backoff of this credential on every
// instance, e.g. after a wrong secret was fixed: the next Token that needs a
// token fetches at once. A backoff recorded by a Fetcher of another identity
// does not apply anyway.
func (s *Source) ResetBackoff(ctx context.Context) error {
	if err := s.store.SaveBackoff(ctx, SharedBackoff{}); err != nil {
		return fmt.Errorf("token: %s: reset backoff: %w", s.name, err)
	}
	s.resets.Add(1)
	s.mu.Lock()
	s.endBackoffLocked()
	s.retryAt, s.failErr = time.Time{}, nil
	s.mu.Unlock()
	s.fetches.reset()
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
