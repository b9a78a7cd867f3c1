package token

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrClosed is returned by a Source after (or during) Close.
	ErrClosed = errors.New("token: source closed")
	// ErrRefreshTimeout is returned when a refresh, including waiting for
	// another instance, took longer than Options.WaitTimeout.
	ErrRefreshTimeout = errors.New("token: refresh took longer than WaitTimeout")
	// ErrInvalidToken is returned when a Fetcher returns an empty or expired
	// token. Nothing is stored.
	ErrInvalidToken = errors.New("token: fetcher returned an empty or expired token")
	// ErrTokenTooLarge is returned when a Fetcher returns a token longer
	// than MaxTokenLen. Nothing is stored or served, and every instance
	// backs off as after a permanent error: the upstream will not send a
	// shorter one if asked again.
	ErrTokenTooLarge error = permanentError("token: fetched token is longer than MaxTokenLen")
	// ErrTooManyFetches is the cause of the backoff a Source enters when it
	// has fetched more than MaxFetchesPerLifetime times within one token
	// lifetime. Nothing the library does should need that many; it stops
	// a loop, whatever its cause, before it spends the upstream's quota.
	ErrTooManyFetches = errors.New("token: too many fetches within one token lifetime")
	// ErrUpstreamBackoff is wrapped by a *BackoffError.
	ErrUpstreamBackoff = errors.New("token: upstream backing off after failures")
)

// MaxTokenLen is the longest token a Source accepts from a Fetcher, in
// bytes. Every Store must be able to hold a token this long.
const MaxTokenLen = 32 << 10

// MaxFetchesPerLifetime bounds how many tokens one Source fetches within
// one token lifetime, or within 10 minutes for tokens that live longer: the
// next fetch waits, through the shared backoff, until the oldest of them
// is that old. Routine refreshes need one fetch per lifetime, and each
// Invalidate of a current token one more. Failed fetches do not count:
// Options.Backoff paces them.
const MaxFetchesPerLifetime = 5

// permanentError is an error that DefaultBackoff treats as permanent.
type permanentError string

func (e permanentError) Error() string   { return string(e) }
func (e permanentError) Permanent() bool { return true }

// BackoffError is returned while the cluster waits after failed fetches:
// no instance calls the upstream until the wait is over.
type BackoffError struct {
	Failures  int
	Remaining time.Duration
	// Last is the last failure's message, as some instance saw it.
	Last string
}

func (e *BackoffError) Error() string {
	return fmt.Sprintf("token: upstream failed %d times (last: %s); no fetch for another %v",
		e.Failures, e.Last, e.Remaining.Round(time.Millisecond))
}

// Unwrap returns ErrUpstreamBackoff.
func (e *BackoffError) Unwrap() error { return ErrUpstreamBackoff }
