package rediscache_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// TestExpiringTokenIsAMiss: a token read in its last millisecond, when PTTL
// says 0, is about to expire: Load reports a miss (or the token), never a
// malformed value.
func TestExpiringTokenIsAMiss(t *testing.T) {
	addr := realRedis(t)
	ctx := context.Background()
	c, err := newCache(t, newClient(t, addr), rediscache.Options{Prefix: prefix(t), Source: token.Options{Logger: quiet}}).Credential("c")
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 200
	var loads, malformed, hits int
	var firstErr error
	for range rounds {
		v, err := c.NextVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Save(ctx, token.Shared{Value: "expiring-token-0123456789", Version: v, TTL: 3 * time.Millisecond, Lifetime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(time.Second); ; {
			sh, err := c.Load(ctx)
			loads++
			if errors.Is(err, token.ErrNotFound) {
				break
			}
			switch {
			case errors.Is(err, token.ErrMalformed):
				malformed++
				if firstErr == nil {
					firstErr = err
				}
			case err != nil:
				t.Fatal(err)
			case sh.TTL <= 0:
				t.Fatalf("Load returned a token with TTL %v", sh.TTL)
			default:
				hits++
			}
			if time.Now().After(deadline) {
				t.Fatal("the token did not expire")
			}
		}
	}
	t.Logf("%d rounds, %d loads: %d hits, %d malformed (first: %v)", rounds, loads, hits, malformed, firstErr)
	if malformed > 0 {
		t.Errorf("%d loads of an expiring token were reported malformed, want 0 (first: %v)", malformed, firstErr)
	}
}

// expiringOnMiniredis saves a token on miniredis and moves its clock to
// 0.5 ms before the expiry, so that PTTL is 0: deterministic, where real
// servers show it in about one run of 15.
func expiringOnMiniredis(t *testing.T) (*rediscache.Credential, int64) {
	t.Helper()
	mr := miniredis.RunT(t)
	c, err := newCache(t, newClient(t, mr.Addr()), rediscache.Options{Source: token.Options{Logger: quiet}}).Credential("c")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	v, err := c.NextVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Save(ctx, token.Shared{Value: "expiring-token-0123456789", Version: v, TTL: 3 * time.Millisecond, Lifetime: time.Hour}); err != nil {
		t.Fatal(err)
	}
	mr.FastForward(2500 * time.Microsecond)
	if ttl := mr.TTL("{tokencache:c}:token"); ttl <= 0 || ttl >= time.Millisecond {
		t.Fatalf("TTL = %v, want under 1ms, so that PTTL is 0 (the setup is broken)", ttl)
	}
	return c, v
}

// TestExpiringTokenIsAMissMiniredis: a token with PTTL 0 is a plain miss.
func TestExpiringTokenIsAMissMiniredis(t *testing.T) {
	c, _ := expiringOnMiniredis(t)
	sh, err := c.Load(context.Background())
	if !errors.Is(err, token.ErrNotFound) || errors.Is(err, token.ErrMalformed) {
		t.Errorf("Load with PTTL 0 = %v, %v; want a plain miss (token.ErrNotFound)", sh, err)
	}
}

// TestExpiringTokenIsNotInvalidated: in its last millisecond, when PTTL says
// 0, Load reports a token as gone, so Invalidate must not report it removed
// either, nor record the version as invalidated and announce it.
// tokentest.TestStore's TTL subtest found this on real servers (Redis 7.0,
// standalone and Cluster), in about one run of 15.
func TestExpiringTokenIsNotInvalidated(t *testing.T) {
	c, v := expiringOnMiniredis(t)
	ctx := context.Background()
	if ok, err := c.Invalidate(ctx, v); ok || err != nil {
		t.Errorf("Invalidate(%d) with PTTL 0 = %v, %v; want false, nil, as Load saw no token", v, ok, err)
	}
	sh, err := c.Load(ctx)
	if errors.Is(err, token.ErrInvalidated) || sh.Fence.Invalidated != 0 {
		t.Errorf("Load after Invalidate with PTTL 0 = %v, Fence %+v; want a plain miss, nothing invalidated", err, sh.Fence)
	}
}
