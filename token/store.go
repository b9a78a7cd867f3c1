package token

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors a Store or Locker returns so that a Source can tell the expected
// outcomes of the protocol from failures. Match them with errors.Is.
var (
	// ErrNotFound means the store holds no token for the credential.
	ErrNotFound = errors.New("token: no shared token")
	// ErrInvalidated accompanies ErrNotFound when the store's last token
	// was removed by Invalidate and nothing newer was written since.
	ErrInvalidated = errors.New("token: shared token was invalidated")
	// ErrMalformed means the stored value could not be decoded. A Source
	// treats it as a miss and overwrites the value on the next refresh.
	ErrMalformed = errors.New("token: malformed shared value")
	// ErrFenced means a write was refused because the store already holds a
	// token with the same or a newer version.
	ErrFenced = errors.New("token: write fenced by a newer version")
	// ErrStoreUnavailable is wrapped by errors that come from the shared
	// store failing (Redis down, unreachable, timing out). A Source keeps
	// serving its near-cached token while it is valid; after that, Token
	// returns this error rather than fetching on its own.
	ErrStoreUnavailable = errors.New("token: shared store unavailable")
	// ErrLocked means another instance holds the refresh lock.
	ErrLocked = errors.New("token: refresh lock held by another instance")
)

// Shared is a token as the shared store holds it.
type Shared struct {
	// Value is the token.
	Value string
	// Version is the fencing version the token was written with.
	Version int64
	// TTL is the remaining lifetime, measured by the store (not by any
	// instance's wall clock).
	TTL time.Duration
	// Lifetime is the token's whole lifetime when it was written; it sizes
	// the refresh-ahead window.
	Lifetime time.Duration
	// Identity is the fingerprint of the account the token was fetched
	// for ("" if unknown). Save records it beside the token; Load returns
	// the recorded one in Fence.
	Identity string
	// Fence is what the store said about the credential's versions in the
	// same read. Load sets it even when it returns an error wrapping
	// ErrNotFound or ErrMalformed; Save ignores it.
	Fence Fence
}

// Fence is the store's own record of a credential's versions. A Source
// checks every version announced by an Event against it, so that a forged
// or foreign notification cannot outrank the token the store holds.
type Fence struct {
	// Written is the highest version the store has saved (0 if none).
	Written int64
	// Invalidated is the highest version the store has removed through
	// Invalidate (0 if none).
	Invalidated int64
	// Identity is the account fingerprint saved with the last token
	// ("" if none was).
	Identity string
}

// EventKind says what an Event reports.
type EventKind int

const (
	// Refreshed means a token with Event.Version was written.
	Refreshed EventKind = iota + 1
	// Invalidated means the token with Event.Version was invalidated.
	Invalidated
	// Resync means events may have been lost (e.g. a subscription was
	// re-established): re-read the shared token. It also ends Unsubscribed.
	Resync
	// Unsubscribed means notifications are not being delivered (the
	// subscription was refused or could not be confirmed). Until the next
	// Resync, a Source re-reads a token it serves at most once per
	// PollInterval, and only when a caller asks for it.
	Unsubscribed
)

// An Event tells a Source that the shared token changed. Events come from
// outside the process and are not trusted: a version an Event announces is
// checked against the store's Fence by the next read before it can make a
// Source refuse a stored token.
type Event struct {
	// Kind says what happened.
	Kind EventKind
	// Version is the version written (Refreshed) or invalidated
	// (Invalidated); 0 for Resync and Unsubscribed.
	Version int64
}

// A Store is the shared state of one credential: its token, its backoff
// record and its notifications. It is what a store implementation provides
// (package rediscache is one); users of a Source need none of its methods.
// Run tokentest.TestStore against an implementation to check that it keeps
// this contract.
//
// Implementations must be safe for concurrent use and must measure TTLs on a
// single clock (the store's), so that instances never compare their own
// clocks with each other's.
type Store interface {
	TokenStore
	BackoffStore
	Notifier
}

// A TokenStore holds one credential's token under fencing versions.
type TokenStore interface {
	// Load returns the stored token, ErrNotFound if there is none (wrapped
	// together with ErrInvalidated if the last one was invalidated), or an
	// error wrapping ErrMalformed if the stored value cannot be decoded. In
	// all three cases Shared.Fence holds the store's versions, read in the
	// same atomic step as the token.
	Load(ctx context.Context) (Shared, error)
	// NextVersion returns a fencing version greater than any returned before.
	NextVersion(ctx context.Context) (int64, error)
	// Save stores s with s.TTL as its time to live, unless a token with the
	// same or a newer version was already saved, in which case it returns an
	// error wrapping ErrFenced. A successful Save notifies watchers and
	// clears the SharedBackoff. A store must accept any value up to
	// MaxTokenLen bytes, and may refuse a longer one with an error wrapping
	// ErrTokenTooLarge.
	Save(ctx context.Context, s Shared) error
	// Invalidate removes the stored token if, and only if, it has the given
	// version, and then notifies watchers. It reports whether it removed it.
	Invalidate(ctx context.Context, version int64) (bool, error)
}

// A BackoffStore holds one credential's SharedBackoff.
type BackoffStore interface {
	// LoadBackoff returns the failures recorded since the last successful
	// Save, and how long every instance must still wait before fetching.
	LoadBackoff(ctx context.Context) (SharedBackoff, error)
	// SaveBackoff records b; the next successful Save clears it, and so
	// does a SaveBackoff of the zero SharedBackoff.
	SaveBackoff(ctx context.Context, b SharedBackoff) error
}

// A Notifier delivers one credential's Events.
type Notifier interface {
	// Watch calls fn for every event on this credential until stop is
	// called. fn must not block; it may be called from several goroutines
	// at once, and events may arrive out of order (a Source orders them by
	// version). Watch itself must not wait for I/O: a store that subscribes
	// in the background sends Resync once the subscription is confirmed,
	// or Unsubscribed if it fails; a store whose watchers are live when
	// Watch returns need not send Resync. No event published after stop
	// returns is delivered (a call already under way may finish). Call stop
	// once.
	Watch(fn func(Event)) (stop func())
}

// SharedBackoff is the shared record of failed refreshes of one credential. It
// holds no error message, which could carry a secret: only its class and
// code.
type SharedBackoff struct {
	// Failures counts failed refreshes since the last success.
	Failures int
	// Remaining is how long no instance may fetch, measured by the store.
	Remaining time.Duration
	// Class and Code describe the last failure (see Classify).
	Class, Code string
	// Identity is the fingerprint of the Fetcher that failed (account and
	// secret), "" if unknown: the backoff binds only Sources with the same.
	Identity string
}

// A Locker guards the refresh of one credential across instances.
type Locker interface {
	// TryLock obtains the lock without waiting. It returns an error wrapping
	// ErrLocked if another holder has it: a *LockedError if the store can
	// tell how long the lock has left.
	TryLock(ctx context.Context) (Held, error)
}

// LockedError is returned by TryLock when another holder has the lock. It
// matches ErrLocked. Remaining lets waiters with no usable token look again
// as the lock expires, which is when a refresher that died stops blocking
// the others, rather than up to a poll interval later.
type LockedError struct {
	// Remaining is the lock's time to live, measured by the store.
	Remaining time.Duration
}

// Error says that the lock is held, and for how long.
func (e *LockedError) Error() string {
	return fmt.Sprintf("%v (expires in %v)", ErrLocked, e.Remaining)
}

// Unwrap returns ErrLocked.
func (e *LockedError) Unwrap() error { return ErrLocked }

// Held is an obtained lock, kept alive until released.
type Held interface {
	// Context is done when the lock is lost or released; a fetch runs
	// under it, so that a refresher that lost its lock stops fetching.
	Context() context.Context
	// Release gives the lock up. It is safe to call more than once.
	Release(ctx context.Context) error
}
