package token

// Rotating refresh state: credentials refreshed with a secret that each
// refresh replaces (an OAuth2 refresh token with rotation, WeChat Open
// Platform's authorizer_refresh_token). Redeeming the same state twice
// revokes the whole family at many providers, and losing the new state
// means the user must authorize again: the state is read and redeemed only
// under the credential's lock, committed durably before the access token is
// shared, and never kept with a TTL.

import (
	"context"
	"errors"
)

// ErrRefreshRevoked is wrapped by the error of a refresh whose state the
// upstream refused (OAuth2 invalid_grant, WeChat errcode 61023): it was
// revoked, expired, or already redeemed by another instance that lost its
// lock mid-redemption. It is permanent: only a new authorization (SeedRefresh)
// ends it. A Redeemer reports it by returning an error that matches it.
var ErrRefreshRevoked = permanentError("token: refresh state refused by the upstream (revoked, expired or reused)")

// ErrNoRefreshState is returned while a credential has no refresh state:
// it was never seeded, or it was deleted.
var ErrNoRefreshState = permanentError("token: no refresh state: authorize first (SeedRefresh)")

// errNoRefreshStore means a Redeemer was given without a RefreshStore.
var errNoRefreshStore = errors.New("a Redeemer needs a RefreshStore (the Store, or Options.RefreshStore)")

// RefreshState is a credential's current refresh secret.
type RefreshState struct {
	// Value is the secret a refresh redeems.
	Value string
	// Generation counts replacements: each commit stores Generation+1, and
	// a commit against a generation that is no longer stored is fenced.
	Generation int64
}

// A Redeemer is the Fetcher of a credential refreshed with rotating
// refresh state: it redeems refresh and returns the new token with the
// state that replaces refresh. A Source calls it only under the
// credential's lock, with the state read under that lock.
type Redeemer interface {
	Fetcher
	// Redeem exchanges refresh for a new token and the next refresh
	// state ("" if the upstream did not rotate it: refresh stays). An
	// error matching ErrRefreshRevoked says the upstream refused refresh.
	Redeem(ctx context.Context, refresh string) (tok Token, next string, err error)
}

// A RefreshStore keeps refresh states, durably: no TTL, and (for Redis) a
// maxmemory-policy that never evicts keys without one. package rediscache's
// Credential is one; a PostgreSQL one lives in its own module.
type RefreshStore interface {
	// LoadRefresh returns the current state, or an error wrapping
	// ErrNoRefreshState.
	LoadRefresh(ctx context.Context) (RefreshState, error)
	// CommitRefresh stores next as generation gen+1 if the stored
	// generation is still gen, and otherwise returns an error wrapping
	// ErrFenced.
	CommitRefresh(ctx context.Context, gen int64, next string) error
	// SeedRefresh stores value as the first state of a new authorization,
	// under a generation greater than any stored before, and returns it.
	SeedRefresh(ctx context.Context, value string) (int64, error)
	// DeleteRefresh removes the state (the authorization was revoked).
	DeleteRefresh(ctx context.Context) error
}
