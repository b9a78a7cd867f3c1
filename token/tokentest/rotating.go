package tokentest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tokencache/tokencache/token"
)

// ErrRevoked is what Rotating returns for a refresh token it refuses; it
// matches token.ErrRefreshRevoked.
var ErrRevoked = fmt.Errorf("tokentest: invalid_grant: %w", token.ErrRefreshRevoked)

// Rotating is a fake authorization server whose refresh tokens rotate, as
// OAuth2 servers with reuse detection (Auth0, Okta, ory/fosite) and WeChat
// Open Platform's authorizer_refresh_token do: each redemption returns a new
// access token and a new refresh token, and redeeming a refresh token that
// was already replaced revokes the whole family, unless it happens within
// Grace, which returns the pair already issued. Set its fields before first
// use; its methods are safe for concurrent use. It implements
// token.Redeemer.
type Rotating struct {
	// Lifetime of each access token. Default 1s.
	Lifetime time.Duration
	// Grace is how long a replaced refresh token may be redeemed again
	// without revoking the family. Zero revokes at once.
	Grace time.Duration
	// Latency of each redemption.
	Latency time.Duration

	mu          sync.Mutex // guards the fields below
	byRefresh   map[string]*family
	access      map[string]accessToken
	redemptions int
	revocations int
}

// family is one authorization's chain of refresh tokens.
type family struct {
	current  string
	previous string    // the refresh token current replaced
	replaced time.Time // when
	pair     token.Token
	revoked  bool
}

type accessToken struct {
	fam     *family
	expires time.Time
}

// NewRotating returns a Rotating whose access tokens live for lifetime.
func NewRotating(lifetime time.Duration) *Rotating {
	return &Rotating{Lifetime: lifetime}
}

func (r *Rotating) init() {
	if r.byRefresh == nil {
		r.byRefresh, r.access = map[string]*family{}, map[string]accessToken{}
	}
}

func randomValue(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Authorize starts a new family, as an authorization code exchange does, and
// returns its first refresh token.
func (r *Rotating) Authorize() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	f := &family{current: randomValue("rt-")}
	r.byRefresh[f.current] = f
	return f.current
}

// Fetch implements token.Fetcher; a Source calls Redeem instead.
func (r *Rotating) Fetch(context.Context) (token.Token, error) {
	return token.Token{}, errors.New("tokentest: Rotating needs a refresh token: use Redeem")
}

// Redeem implements token.Redeemer. The server acts on the request at once
// and answers after Latency: a caller whose context ends meanwhile gets no
// answer, but the refresh token it sent was replaced all the same, as when
// a reply is lost in flight.
func (r *Rotating) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	tok, next, err := r.redeem(refresh)
	if r.Latency > 0 {
		t := time.NewTimer(r.Latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return token.Token{}, "", ctx.Err()
		}
	}
	return tok, next, err
}

func (r *Rotating) redeem(refresh string) (token.Token, string, error) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	r.redemptions++
	f := r.byRefresh[refresh]
	switch {
	case f == nil || f.revoked:
		return token.Token{}, "", ErrRevoked
	case refresh == f.previous && now.Sub(f.replaced) <= r.Grace:
		return f.pair, f.current, nil // within the grace period
	case refresh != f.current:
		f.revoked = true // reuse: the whole family is revoked
		r.revocations++
		return token.Token{}, "", ErrRevoked
	}
	lifetime := r.Lifetime
	if lifetime <= 0 {
		lifetime = time.Second
	}
	f.previous, f.replaced = f.current, now
	f.current = randomValue("rt-")
	r.byRefresh[f.current] = f
	f.pair = token.Token{Value: randomValue("at-"), ExpiresAt: now.Add(lifetime)}
	r.access[f.pair.Value] = accessToken{fam: f, expires: f.pair.ExpiresAt}
	return f.pair, f.current, nil
}

// Valid reports whether the access token v is accepted now: issued, not
// expired, and its family not revoked.
func (r *Rotating) Valid(v string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.access[v]
	return ok && !a.fam.revoked && time.Now().Before(a.expires)
}

// Redemptions counts calls of Redeem; Revocations counts families revoked
// for reuse.
func (r *Rotating) Redemptions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.redemptions
}

// Revocations counts families revoked because a replaced refresh token was
// redeemed again outside Grace.
func (r *Rotating) Revocations() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.revocations
}
