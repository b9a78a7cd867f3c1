package token

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
// Options.BackoffPolicy paces them.
const MaxFetchesPerLifetime = 5

// ErrFetcherPanic is wrapped by the error a refresh returns when the
// Fetcher panicked. The panic is recovered, its stack logged, and every
// instance backs off as after a permanent error, so that a deterministic
// panic does not take down each instance in turn.
var ErrFetcherPanic error = permanentError("token: fetcher panicked")

// ErrInvalidConfig is wrapped by errors about arguments or options that can
// never work, returned by constructors.
var ErrInvalidConfig = errors.New("token: invalid configuration")

// Error classes: what every instance learns about a failed refresh through
// the shared backoff. A class and a code are shared; an error's message is
// not, because it may hold a secret.
const (
	ClassTemporary      = "temporary"        // worth retrying soon
	ClassPermanent      = "permanent"        // Permanent() is true: wrong credentials, quota
	ClassTimeout        = "timeout"          // the fetch ran past FetchTimeout
	ClassInvalidToken   = "invalid_token"    // ErrInvalidToken
	ClassTooLarge       = "too_large"        // ErrTokenTooLarge
	ClassTooManyFetches = "too_many_fetches" // ErrTooManyFetches
	ClassPanic          = "panic"            // ErrFetcherPanic
	ClassNotPushed      = "not_pushed"       // ErrNotPushed
	ClassRefreshRevoked = "refresh_revoked"  // ErrRefreshRevoked
	ClassNoRefreshState = "no_refresh_state" // ErrNoRefreshState
)

// classSentinels maps the classes that have a sentinel error to it.
var classSentinels = map[string]error{
	ClassInvalidToken:   ErrInvalidToken,
	ClassTooLarge:       ErrTokenTooLarge,
	ClassTooManyFetches: ErrTooManyFetches,
	ClassPanic:          ErrFetcherPanic,
	ClassNotPushed:      ErrNotPushed,
	ClassRefreshRevoked: ErrRefreshRevoked,
	ClassNoRefreshState: ErrNoRefreshState,
}

// Classify returns the class of a refresh error (one of the Class
// constants) and its code: the ErrorCode() of the first error in its chain
// that has such a method (e.g. a WeChat errcode), limited to 32 letters,
// digits and "-_.:", or "".
func Classify(err error) (class, code string) {
	var c interface{ ErrorCode() string }
	if errors.As(err, &c) {
		code = cleanCode(c.ErrorCode())
	}
	for cl, sentinel := range classSentinels {
		if errors.Is(err, sentinel) {
			return cl, code
		}
	}
	var p interface{ Permanent() bool }
	switch {
	case errors.As(err, &p) && p.Permanent():
		return ClassPermanent, code
	case errors.Is(err, context.DeadlineExceeded):
		return ClassTimeout, code
	}
	return ClassTemporary, code
}

// cleanCode bounds a code that may come from outside.
func cleanCode(c string) string {
	if len(c) > 32 || strings.IndexFunc(c, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r))
	}) >= 0 {
		return ""
	}
	return c
}

// BackoffError is returned while the cluster waits after failed fetches:
// no instance calls the upstream until the wait is over, or until
// Source.ResetBackoff ends it.
type BackoffError struct {
	// Failures counts failed refreshes since the last success.
	Failures int
	// Remaining is how long the wait still lasts, when the error was made.
	Remaining time.Duration
	// Class and Code describe the last failure (see Classify), as the
	// instance that saw it shared them.
	Class, Code string
	// cause is the last failure itself, known only to the instance that
	// saw it: its message stays in this process.
	cause error
}

// Error says how many refreshes failed, how the last one failed (class and
// code, never the message of another instance's error) and the time left.
func (e *BackoffError) Error() string {
	last := e.Class
	if e.Code != "" {
		last += " " + e.Code
	}
	msg := fmt.Sprintf("token: upstream failed %d times (last: %s); no fetch for another %v (Source.ResetBackoff ends it)",
		e.Failures, last, e.Remaining.Round(time.Millisecond))
	if e.cause != nil {
		msg += ": " + e.cause.Error()
	}
	return msg
}

// Unwrap returns ErrUpstreamBackoff and, on the instance that saw it, the
// last failure.
func (e *BackoffError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrUpstreamBackoff}
	}
	return []error{ErrUpstreamBackoff, e.cause}
}

// Is reports whether the last failure's class is target's, so that
// errors.Is(err, ErrTooManyFetches) holds on every instance.
func (e *BackoffError) Is(target error) bool {
	s, ok := classSentinels[e.Class]
	return ok && s == target
}

// Permanent reports whether the last failure was one retrying cannot fix,
// by its class, so that it holds on every instance, not only on the one
// that saw the failure.
func (e *BackoffError) Permanent() bool {
	if e.Class == ClassPermanent {
		return true
	}
	var p interface{ Permanent() bool }
	s, ok := classSentinels[e.Class]
	return ok && errors.As(s, &p) && p.Permanent()
}

// permanentError is an error that DefaultBackoffPolicy treats as permanent.
type permanentError string

func (e permanentError) Error() string   { return string(e) }
func (e permanentError) Permanent() bool { return true }
