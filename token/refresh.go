package token

// Rotating refresh state: credentials refreshed with a secret that each
// refresh replaces (an OAuth2 refresh token with rotation, WeChat Open
// Platform's authorizer_refresh_token). Redeeming the same state twice
// revokes the whole family at many providers, and losing the new state
// means the user must authorize again: the state is read and redeemed only
// under the credential's lock, committed durably before the access token is
// shared (or with it, in one step, by a RotationSaver), and never kept with
// a TTL.
//
// Write order: redeem -> commit the new state (compare-and-set on its
// generation) -> fenced save of the access token. A crash after the commit
// loses only an access token, which is fetched again. No order closes two
// windows: a crash between the upstream's reply and the commit loses the
// new state, and a lock lost mid-redemption lets a second instance redeem
// the same one. Either way the next redemption sends a replaced state; an
// upstream with a reuse grace period answers it, a strict one refuses it
// (ErrRefreshRevoked, permanent: each instance sends a refused state once,
// callers get the error until SeedRefresh).

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
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
// state that replaces refresh. A Source calls Redeem (never Fetch) only
// under the credential's lock, with the state read under that lock; ctx
// ends after Options.FetchTimeout but not when the lock is lost, because a
// request the upstream may have acted on must not lose its reply. A Source
// with a Redeemer cannot use Options.FetchWhenStoreDown.
type Redeemer interface {
	Fetcher
	// Redeem exchanges refresh for a new token and the next refresh
	// state ("" if the upstream did not rotate it: refresh stays). An
	// error matching ErrRefreshRevoked says the upstream refused refresh.
	// A Redeemer whose upstream replaced refresh but whose token is of no
	// use returns next with its error: next is committed all the same.
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

// A RotationSaver is a Store that also keeps the refresh state (it is the
// RefreshStore) and can replace the state and save the token redeemed with
// it in one step, as rediscache's Credential does in one Lua script: no
// crash between the two writes, and one round trip. A Source uses it when
// Options.RefreshStore is left to default to the Store.
type RotationSaver interface {
	// SaveRotated commits next as generation gen+1 and saves sh as Save
	// does, in one step. If gen is no longer the stored generation (another
	// instance redeemed the same state, or a new authorization was seeded)
	// it writes nothing and returns an error wrapping ErrFenced. Otherwise
	// it commits next even if a newer token is stored, and then returns an
	// error wrapping ErrFenced: the upstream has replaced the old state.
	SaveRotated(ctx context.Context, sh Shared, gen int64, next string) error
}

// commitAttempts bounds the writes of one new refresh state: a write whose
// outcome is unknown (a timeout) is tried again, which the generation makes
// safe.
const commitAttempts = 3

// rotation is how a Source redeems its Redeemer's refresh state. r, rs and
// saver are written once, in NewSource.
type rotation struct {
	r  Redeemer
	rs RefreshStore
	// saver is the Store, when it is also rs and saves both in one step;
	// nil otherwise.
	saver RotationSaver
	// refused is the last generation the upstream refused: it is never
	// sent again (a new state has a new generation). 0: none.
	refused atomic.Int64
}

// newRotation returns the rotation of f, or nil if f is not a Redeemer. It
// settles opts.RefreshStore.
func newRotation(f Fetcher, store Store, opts *Options) (*rotation, error) {
	r, ok := f.(Redeemer)
	if !ok {
		return nil, nil
	}
	if opts.FetchWhenStoreDown {
		// Without the store's lock two instances would redeem one state.
		return nil, errors.New("FetchWhenStoreDown cannot be used with a Redeemer")
	}
	rot := &rotation{r: r, rs: opts.RefreshStore}
	if rot.rs == nil {
		rs, ok := store.(RefreshStore)
		if !ok {
			return nil, errNoRefreshStore
		}
		rot.rs, opts.RefreshStore = rs, rs
		rot.saver, _ = store.(RotationSaver)
	}
	return rot, nil
}

// rotated is a new refresh state to commit: it replaced generation gen.
type rotated struct {
	gen  int64
	next string
}

// redeem redeems the refresh state read while the lock (lctx) is held. ctx
// bounds the redemption and is not ended by losing the lock: cancelling a
// request the upstream may already have acted on can only lose the state
// that replaced the one sent.
func (r *rotation) redeem(ctx, lctx context.Context) (fetched, error) {
	st, err := r.rs.LoadRefresh(ctx)
	if err != nil {
		return fetched{}, fmt.Errorf("load refresh state: %w", err)
	}
	switch {
	case lctx.Err() != nil:
		// Lost before anything was sent: whoever holds it now redeems.
		return fetched{}, context.Cause(lctx)
	case st.Generation == r.refused.Load():
		// Refused already: asking again cannot help, and an upstream
		// counting reuse may take it as an attack.
		return fetched{}, fmt.Errorf("refresh state generation %d refused before: %w", st.Generation, ErrRefreshRevoked)
	}
	tok, next, err := r.r.Redeem(ctx, st.Value)
	if err != nil && errors.Is(err, ErrRefreshRevoked) {
		r.refused.Store(st.Generation)
		return fetched{}, err
	}
	var f fetched
	if next != "" && next != st.Value {
		if cerr := checkState(next); cerr != nil {
			// No store could keep it: the state is lost either way, and
			// the error says why.
			if err != nil {
				return fetched{}, err
			}
			return fetched{}, fmt.Errorf("the upstream's new %w", cerr)
		}
		f.rot = &rotated{gen: st.Generation, next: next}
	}
	if err != nil {
		// The token is of no use, but the upstream replaced the state:
		// the caller commits f.rot all the same.
		return f, err
	}
	f.tok = tok
	return f, nil
}

// checkState refuses a refresh state no store is required to keep.
func checkState(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("empty refresh state: %w", ErrInvalidToken)
	case len(v) > MaxTokenLen:
		return fmt.Errorf("refresh state of %d bytes (at most %d): %w", len(v), MaxTokenLen, ErrTokenTooLarge)
	}
	return nil
}

// commit writes a new refresh state with write, trying again a write whose
// outcome is unknown. A fenced retry after such an error is checked: the
// stored state may be the one the first try wrote.
func (r *rotation) commit(ctx context.Context, rot *rotated, write func(context.Context) error) error {
	var err error
	for attempt := range commitAttempts {
		if attempt > 0 {
			t := time.NewTimer(time.Duration(attempt) * 100 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return err
			}
		}
		err = write(ctx)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ErrFenced):
			if attempt > 0 {
				if st, lerr := r.rs.LoadRefresh(ctx); lerr == nil && st.Generation == rot.gen+1 && st.Value == rot.next {
					return errFencedAfterCommit
				}
			}
			return err
		}
	}
	return err
}

// errFencedAfterCommit: a retried write found its own state committed; the
// token it carried may have been saved by the first try, or fenced.
var errFencedAfterCommit = fmt.Errorf("token: refresh state committed by an earlier try: %w", ErrFenced)

// SeedRefresh stores the first refresh state of a new authorization (from
// the application's authorization callback), under a generation newer than
// any before: a refresh redeeming an older state cannot overwrite it. It
// ends a backoff the missing or refused state caused.
func (s *Source) SeedRefresh(ctx context.Context, value string) error {
	if s.opts.RefreshStore == nil {
		return fmt.Errorf("%w: %s: the Fetcher is not a Redeemer", ErrInvalidConfig, s.name)
	}
	if err := checkState(value); err != nil {
		return fmt.Errorf("token: %s: seed: %w", s.name, err)
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
