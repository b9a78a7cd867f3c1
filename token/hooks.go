package token

// Hooks: what a Source does, for metrics and traces, at no cost on the hot
// path.

import (
	"context"
	"errors"
	"time"
)

// Hooks observe what a Source does, for metrics and traces (package
// extra/otel builds them), in the style of net/http/httptrace. Every field may be nil. A hook must not block or
// panic: it runs on the goroutine of the refresh or of the caller. It is
// never called with a lock of the Source held nor from the store's
// notification dispatch, and never receives a token, a refresh state or a
// secret: only the credential's name, durations, outcomes and error classes
// (Classify). The Token calls served from the near cache call none.
type Hooks struct {
	// FetchStart is called before the Fetcher (or Redeemer) is called.
	FetchStart func(FetchStartInfo)
	// FetchDone is called once the fetch and the save after it ended.
	FetchDone func(FetchDoneInfo)
	// WaitDone is called when a Token call that could not be served from
	// the near cache returns.
	WaitDone func(WaitDoneInfo)
	// Invalidated is called when Invalidate returns.
	Invalidated func(InvalidateInfo)
	// StoreError is called when a call to the store fails.
	StoreError func(StoreErrorInfo)
	// Backoff is called when this instance starts holding back for a
	// shared backoff (Active), and when it stops.
	Backoff func(BackoffInfo)
	// LockLost is called when the refresh lock was lost mid-refresh.
	LockLost func(LockLostInfo)
}

// FetchStartInfo describes a fetch about to start.
type FetchStartInfo struct {
	Credential string
	Reason     Reason
}

// Fetch outcomes (FetchDoneInfo.Outcome).
const (
	FetchOK     = "ok"     // fetched and shared
	FetchError  = "error"  // the fetch failed (Class says how)
	FetchFenced = "fenced" // fetched, but a newer token was saved meanwhile
)

// FetchDoneInfo describes a fetch that ended.
type FetchDoneInfo struct {
	Credential string
	Reason     Reason
	Duration   time.Duration // of the fetch (or redemption) alone
	Outcome    string        // FetchOK, FetchError or FetchFenced
	// Class and Code describe a failure (see Classify); "" on success.
	Class, Code string
}

// Wait outcomes (WaitDoneInfo.Outcome).
const (
	WaitOK      = "ok"
	WaitTimeout = "timeout" // the caller's context or WaitTimeout ended it
	WaitBackoff = "backoff" // a shared backoff (BackoffError)
	WaitClosed  = "closed"  // ErrClosed
	WaitError   = "error"   // any other error
)

// WaitDoneInfo describes a Token call that was not served from the near cache.
type WaitDoneInfo struct {
	Credential string
	Duration   time.Duration
	Outcome    string // one of the Wait constants
}

// InvalidateInfo describes an Invalidate call.
type InvalidateInfo struct {
	Credential string
	// Removed: the store removed the token; false: it was already
	// replaced (possibly by the refresh this call started: callers stop
	// using a token the moment it is reported bad) or the call failed.
	Removed bool
}

// StoreErrorInfo describes a failed call to the store.
type StoreErrorInfo struct {
	Credential string
	Op         string // what was asked: "read shared token", "save", "lock", ...
}

// BackoffInfo describes a shared backoff this instance starts or stops
// obeying.
type BackoffInfo struct {
	Credential string
	Active     bool
	// Class and Code describe the failure that started it (see Classify).
	Class, Code string
}

// LockLostInfo describes a refresh lock lost mid-refresh.
type LockLostInfo struct {
	Credential string
}

// waitOutcome classifies the result of a Token call.
func waitOutcome(err error) string {
	switch {
	case err == nil:
		return WaitOK
	case errors.Is(err, ErrClosed):
		return WaitClosed
	case isBackoff(err):
		return WaitBackoff
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, ErrRefreshTimeout):
		return WaitTimeout
	}
	return WaitError
}

func isBackoff(err error) bool {
	var be *BackoffError
	return errors.As(err, &be)
}

// fetchDone reports a fetch that ended with err (nil: shared, or fenced).
func (h *Hooks) fetchDone(name string, reason Reason, d time.Duration, fenced bool, err error) {
	if h.FetchDone == nil {
		return
	}
	fd := FetchDoneInfo{Credential: name, Reason: reason, Duration: d, Outcome: FetchOK}
	switch {
	case err != nil:
		fd.Outcome = FetchError
		fd.Class, fd.Code = Classify(err)
	case fenced:
		fd.Outcome = FetchFenced
	}
	h.FetchDone(fd)
}
