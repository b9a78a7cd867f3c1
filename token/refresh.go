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
	"fmt"
	"log/slog"
	"time"
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

// rotating returns the Fetcher a Source calls for f: f itself, or for a
// Redeemer, one that redeems the stored refresh state and commits the next
// one. It settles opts.RefreshStore.
func rotating(f Fetcher, store Store, opts *Options) (Fetcher, error) {
	r, ok := f.(Redeemer)
	if !ok {
		return f, nil
	}
	if opts.RefreshStore == nil {
		rs, ok := store.(RefreshStore)
		if !ok {
			return nil, errNoRefreshStore
		}
		opts.RefreshStore = rs
	}
	return &redeeming{r: r, rs: opts.RefreshStore, timeout: opts.FetchTimeout, log: opts.Logger}, nil
}

// redeeming is the Fetcher of a Redeemer. The Source calls it only under the
// credential's lock, so the state it reads is redeemed by one instance.
type redeeming struct {
	r       Redeemer
	rs      RefreshStore
	timeout time.Duration // bounds the commit, which must outlive the lock
	log     *slog.Logger
}

// Fetch redeems the current refresh state, then commits the next one
// durably before the token is shared: a crash after the commit costs only
// the access token, which is fetched again.
func (d *redeeming) Fetch(ctx context.Context) (Token, error) {
	st, err := d.rs.LoadRefresh(ctx)
	if err != nil {
		return Token{}, fmt.Errorf("load refresh state: %w", err)
	}
	tok, next, err := d.r.Redeem(ctx, st.Value)
	if err != nil || next == "" || next == st.Value {
		return tok, err
	}
	// Committed even if the lock was lost meanwhile: the upstream has
	// replaced the state, and the generation decides which commit wins.
	cctx, cancel := detached(ctx, d.timeout)
	defer cancel()
	if err := d.rs.CommitRefresh(cctx, st.Generation, next); err != nil {
		// Fenced: another instance redeemed the same state (this one lost
		// its lock mid-redemption) or a new authorization was seeded; the
		// stored state is theirs. Otherwise the new state is lost with
		// this process: the next refresh will redeem the old one, which
		// the upstream may refuse (ErrRefreshRevoked).
		d.log.Error("tokencache: could not commit the new refresh state; the stored one was kept",
			slog.Int64("generation", st.Generation), errAttr(err))
	}
	return tok, nil
}

// Identity forwards the Redeemer's Identity, if it has one.
func (d *redeeming) Identity() Identity {
	if id, ok := d.r.(Identifier); ok {
		return id.Identity()
	}
	return Identity{}
}

// SeedRefresh stores the first refresh state of a new authorization (from
// the application's authorization callback), under a generation newer than
// any before: a refresh redeeming an older state cannot overwrite it. It
// ends a backoff the missing or refused state caused.
func (s *Source) SeedRefresh(ctx context.Context, value string) error {
	if s.opts.RefreshStore == nil {
		return fmt.Errorf("%w: %s: the Fetcher is not a Redeemer", ErrInvalidConfig, s.name)
	}
	if value == "" || len(value) > MaxTokenLen {
		return fmt.Errorf("token: %s: seed refresh state of %d bytes: %w", s.name, len(value), ErrInvalidToken)
	}
	if _, err := s.opts.RefreshStore.SeedRefresh(ctx, value); err != nil {
		return fmt.Errorf("token: %s: seed refresh state: %w", s.name, err)
	}
	return s.ResetBackoff(ctx)
}

// DeleteRefresh removes the refresh state (the account revoked the
// authorization). Refreshes fail with ErrNoRefreshState until SeedRefresh.
func (s *Source) DeleteRefresh(ctx context.Context) error {
	if s.opts.RefreshStore == nil {
		return fmt.Errorf("%w: %s: the Fetcher is not a Redeemer", ErrInvalidConfig, s.name)
	}
	if err := s.opts.RefreshStore.DeleteRefresh(ctx); err != nil {
		return fmt.Errorf("token: %s: delete refresh state: %w", s.name, err)
	}
	return nil
}
