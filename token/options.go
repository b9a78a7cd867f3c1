package token

// Options and the default backoff policy.

import (
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Options configure a Source. The zero value is ready to use; every zero
// field takes the default its comment gives.
type Options struct {
	// RefreshAhead is the fraction of a token's lifetime before its expiry
	// at which it is refreshed. Default 0.2 (a 7200 s token is refreshed
	// 1440 s before it expires). Negative means 0.
	RefreshAhead float64
	// MinRefreshAhead is the floor of the refresh-ahead window. Default 1s.
	// The window is never more than half the lifetime.
	MinRefreshAhead time.Duration
	// FetchTimeout bounds one upstream fetch, counted from the moment the
	// refresh lock is held, whatever the callers' contexts. Default 10s.
	FetchTimeout time.Duration
	// WaitTimeout bounds how long an instance reads and waits for another
	// instance's refresh, whatever the callers' contexts. Default 30s.
	WaitTimeout time.Duration
	// PollInterval is how often an instance that waits for another
	// instance's refresh re-reads the store when no notification arrives.
	// Default 250ms.
	PollInterval time.Duration
	// RetryInterval is how long a Source waits after a failed refresh
	// before it tries again: a Source that still holds a valid token keeps
	// serving it, and while the shared store fails, callers with no valid
	// token get the store's error at once instead of each sending its own
	// requests to a failing store. Default 1s.
	RetryInterval time.Duration
	// BackoffPolicy decides how long every instance waits before fetching again
	// after failures consecutive failed fetches, the last with err. The
	// wait is recorded in the shared store, so a failing upstream sees a
	// handful of calls from the whole cluster, not one per instance or
	// caller. Default DefaultBackoffPolicy.
	BackoffPolicy func(err error, failures int) time.Duration
	// FetchWhenStoreDown lets a Source with no valid token fetch from the
	// upstream itself while the shared store is unavailable (one fetch at a
	// time per Source). Off by default, because then every instance fetches
	// on its own, and with an upstream like WeChat's each fetch invalidates
	// the tokens the others got. When the store answers again, the token is
	// offered to it under a new version and the fenced write decides which
	// token the cluster keeps.
	FetchWhenStoreDown bool
	// Logger receives warnings about failed refreshes and unreadable shared
	// values. Secrets are never logged. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock that turns a fetched Token's ExpiresAt into a
	// lifetime and a shared TTL into ExpiresAt. It must be the clock the
	// Fetcher uses. Default time.Now.
	Now func() time.Time
	// IdentityKey keys the fingerprint of a Fetcher's secret kept in the
	// shared backoff record (see Identity). Every instance of a credential
	// needs the same key; changing it only means that a backoff recorded
	// under the old key does not hold back instances with the new one.
	// Default: none, and the fingerprint is cut to 32 bits; set one (32
	// random bytes) if a secret could be guessed.
	IdentityKey []byte
	// RefreshStore keeps the refresh state of a credential whose Fetcher
	// is a Redeemer. Default: the Store, if it is a RefreshStore (package
	// rediscache's Credential is). Set a durable one (package
	// extra/pgrefresh) when Redis is a cache that may lose keys.
	RefreshStore RefreshStore
	// Hooks observe the Source, for metrics and traces. Default: none.
	Hooks Hooks
}

// DefaultBackoffPolicy waits 10 minutes after an error that retrying cannot fix
// (one with a Permanent() bool method that returns true, such as wrong
// credentials or a spent quota); as long as the upstream asked after an
// error with a RetryAfter() time.Duration method that returns more than
// zero (an HTTP 429 or 503 with Retry-After), up to an hour; and otherwise
// 1s, 2s, 4s, ... up to a minute, each ±20% so that instances do not retry
// in step.
func DefaultBackoffPolicy(err error, failures int) time.Duration {
	var p interface{ Permanent() bool }
	if errors.As(err, &p) && p.Permanent() {
		return 10 * time.Minute
	}
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) {
		if d := ra.RetryAfter(); d > 0 {
			return min(d, time.Hour)
		}
	}
	d := min(time.Second<<min(max(failures-1, 0), 6), time.Minute)
	return d*4/5 + rand.N(d*2/5+1)
}

func (o Options) withDefaults() Options {
	if o.RefreshAhead == 0 {
		o.RefreshAhead = 0.2
	}
	if o.RefreshAhead < 0 {
		o.RefreshAhead = 0
	}
	if o.MinRefreshAhead <= 0 {
		o.MinRefreshAhead = time.Second
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 10 * time.Second
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = 30 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 250 * time.Millisecond
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = time.Second
	}
	if o.BackoffPolicy == nil {
		o.BackoffPolicy = DefaultBackoffPolicy
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// window is the refresh-ahead window of a token with the given lifetime.
func (o Options) window(lifetime time.Duration) time.Duration {
	w := max(time.Duration(o.RefreshAhead*float64(lifetime)), o.MinRefreshAhead)
	return min(w, lifetime/2)
}
