package rediscache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token"
)

// restrictedPair returns two Sources of the credential "c" under prefix p
// that fetch from up: a on the restricted user's client, logging to logsA,
// and b on a client of the default user.
func restrictedPair(t *testing.T, addr string, restricted *redis.Client, p string, up token.Fetcher) (a, b *token.Source, logsA *syncBuffer) {
	t.Helper()
	logsA = new(syncBuffer)
	oA := testOptions(p)
	oA.Source.Logger = logsA.Logger()
	return source(t, restricted, oA, up), source(t, newClient(t, addr), testOptions(p), up), logsA
}

// TestRefusedSubscription: an instance whose Redis user may not SUBSCRIBE
// gets no notifications. It must say so (a WARN about the subscription) and
// must not keep serving a token another instance's Invalidate replaced: it
// re-reads on demand, at most once per PollInterval.
func TestRefusedSubscription(t *testing.T) {
	addr := realRedis(t)
	ctx := context.Background()
	restricted, p := aclUser(t, addr, "tokencache-nosub-test", "+subscribe")

	// The premise: the server refuses this user's SUBSCRIBE.
	{
		ps := restricted.Subscribe(ctx, p+"events")
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := ps.Receive(rctx)
		cancel()
		_ = ps.Close()
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Fatalf("SUBSCRIBE as the restricted user: %v, want NOPERM", err)
		}
	}

	up := newUpstream(time.Hour)
	a, b, logsA := restrictedPair(t, addr, restricted, p, up)

	t1, err := a.Token(ctx)
	if err != nil {
		t.Fatalf("A.Token: %v", err)
	}
	if tok, err := b.Token(ctx); err != nil || tok.Value != t1.Value {
		t.Fatalf("B.Token = %v, %v; want the shared %v", tok, err, t1)
	}
	if err := b.Invalidate(ctx, t1.Value); err != nil {
		t.Fatalf("B.Invalidate: %v", err)
	}
	t2, err := b.Token(ctx)
	if err != nil || t2.Value == t1.Value {
		t.Fatalf("B.Token after Invalidate = %v, %v; want a new token", t2, err)
	}

	// A must serve T2 within 2s (PollInterval is 20ms), and have warned
	// about its subscription by then.
	start := time.Now()
	var got string
	var gotErr error
	if !scenario.Retry(2*time.Second, 5*time.Millisecond, func() bool {
		tok, err := a.Token(ctx)
		got, gotErr = tok.Value, err
		return got == t2.Value && logsA.Count("WARN", "subscri") > 0
	}) {
		t.Fatalf("after 2s: A.Token = %q, %v (T1 %q, T2 %q; T1 valid upstream: %v); A's subscription warnings: %d; A's log:\n%s",
			got, gotErr, t1.Value, t2.Value, up.Valid(t1.Value), logsA.Count("WARN", "subscri"), logsA.String())
	}
	t.Logf("A served T2 and warned %v after B's refresh", time.Since(start).Round(time.Millisecond))
	if n := up.Issued(); n != 2 {
		t.Errorf("upstream issued %d tokens, want 2", n)
	}
}
