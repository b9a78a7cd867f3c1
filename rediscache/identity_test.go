package rediscache_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// idFetcher fetches for an account with a secret; while revoked, the
// upstream refuses the secret.
type idFetcher struct {
	up              *tokentest.Upstream
	account, secret string
	revoked         atomic.Bool
	calls           atomic.Int32
}

func (f *idFetcher) Fetch(ctx context.Context) (token.Token, error) {
	f.calls.Add(1)
	if f.revoked.Load() {
		return token.Token{}, secretError{}
	}
	return f.up.Fetch(ctx)
}

func (f *idFetcher) Identity() token.Identity {
	return token.Identity{Account: f.account, Secret: []byte(f.secret)}
}

func identitySource(t *testing.T, b backend, p string, f token.Fetcher) *token.Source {
	t.Helper()
	return source(t, b.Client(t), testOptions(p), f)
}

// identityPair returns two instances of the credential "c" under prefix p,
// fetching from one upstream with the identities a and b ("account
// secret"), and their fetchers.
func identityPair(t *testing.T, b backend, p, a, bID string) (fa, fb *idFetcher, sa, sb *token.Source) {
	t.Helper()
	up := newUpstream(time.Hour)
	fetcher := func(id string) *idFetcher {
		account, secret, _ := strings.Cut(id, " ")
		return &idFetcher{up: up, account: account, secret: secret}
	}
	fa, fb = fetcher(a), fetcher(bID)
	return fa, fb, identitySource(t, b, p, fa), identitySource(t, b, p, fb)
}

// TestAnotherAccountIsRefused: app B, configured by mistake with app A's
// credential name, gets ErrIdentityMismatch instead of A's token, and never
// fetches over it; A is undisturbed. The store keeps a fingerprint, not the
// account or secret.
func TestAnotherAccountIsRefused(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		p := prefix(t)
		_, fb, a, bs := identityPair(t, b, p, "wechat:wxAAAA secret-a-0123456789", "wechat:wxBBBB secret-b-0123456789")
		ta, err := a.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if tok, err := bs.Token(ctx); !errors.Is(err, token.ErrIdentityMismatch) {
				t.Fatalf("B: %v, %v; want ErrIdentityMismatch", tok, err)
			}
		}
		if fb.calls.Load() != 0 {
			t.Errorf("B fetched %d times", fb.calls.Load())
		}
		if tok, err := a.Token(ctx); err != nil || tok.Value != ta.Value {
			t.Errorf("A after B: %v, %v", tok, err)
		}
		h, _ := b.Client(t).HGetAll(ctx, "{"+p+"c}:fence").Result()
		if len(h["id"]) != 32 || strings.Contains(h["id"], "wxAAAA") {
			t.Errorf("fence id = %q, want a 32-digit fingerprint", h["id"])
		}
	})
}

// TestRollingSecretRotation: during a rolling deploy of a new secret for the
// same account, old and new instances share one token (no refetch in turn).
// Once the old secret is revoked, its failure backs off only the old
// instances: a new one fetches at once, and the old ones then take its token.
func TestRollingSecretRotation(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		oldF, newF, old, nw := identityPair(t, b, prefix(t), "wechat:wx1 old-secret-0123456789", "wechat:wx1 new-secret-0123456789")
		up := oldF.up
		t1, err := old.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tok, err := nw.Token(ctx); err != nil || tok.Value != t1.Value {
			t.Fatalf("the new instance: %v, %v; want the shared token", tok, err)
		}
		if up.Issued() != 1 {
			t.Fatalf("upstream issued %d, want 1", up.Issued())
		}
		// The old secret is revoked and the upstream rejects the token.
		// Whichever instance refreshes first, both end on one token that
		// the new secret fetched.
		oldF.revoked.Store(true)
		_ = old.Invalidate(ctx, t1.Value)
		_, _ = old.Token(ctx) // fails if the old secret refreshes first
		// Until the invalidation reaches it, in the background.
		var t2 token.Token
		if !scenario.Retry(2*time.Second, time.Millisecond, func() bool {
			t2, err = nw.Token(ctx)
			return err != nil || t2.Value != t1.Value
		}) || err != nil {
			t.Fatalf("the new secret was held back by the old one's backoff: %v, %v", t2, err)
		}
		if !up.Valid(t2.Value) {
			t.Fatalf("the new instance serves %v, which the upstream does not accept", t2)
		}
		var tok token.Token
		if !scenario.Retry(2*time.Second, time.Millisecond, func() bool {
			tok, err = old.Token(ctx)
			return err == nil && tok.Value == t2.Value
		}) {
			t.Fatalf("the old instance never took the new secret's token: %v, %v (t1 %v, t2 %v)", tok, err, t1, t2)
		}
		if oldF.calls.Load() > 2 || newF.calls.Load() != 1 || up.Issued() != 2 {
			t.Errorf("fetches: old %d (want at most 2), new %d (want 1), issued %d (want 2)", oldF.calls.Load(), newF.calls.Load(), up.Issued())
		}
	})
}

// TestFixedSecretIsNotHeldBack: after a deploy with a wrong secret, the
// corrected deploy fetches at once, although the wrong one recorded a
// 10-minute backoff.
func TestFixedSecretIsNotHeldBack(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		p := prefix(t)
		up := newUpstream(time.Hour)
		wrong := &idFetcher{up: up, account: "wechat:wx1", secret: "wrong-secret-0123456789"}
		wrong.revoked.Store(true)
		w := identitySource(t, b, p, wrong)
		var be *token.BackoffError
		_, _ = w.Token(ctx)
		if _, err := w.Token(ctx); !errors.As(err, &be) || be.Remaining < 9*time.Minute {
			t.Fatalf("the wrong secret: %v, want a 10-minute backoff", err)
		}
		_ = w.Close()
		fixed := identitySource(t, b, p, &idFetcher{up: up, account: "wechat:wx1", secret: "right-secret-0123456789"})
		if tok, err := fixed.Token(ctx); err != nil || !up.Valid(tok.Value) {
			t.Fatalf("the fixed secret: %v, %v", tok, err)
		}
	})
}
