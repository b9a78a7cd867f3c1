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

// TestExpiringTokenIsNotInvalidated: in its last millisecond, when PTTL says
// 0, Load reports a token as gone (TestExpiringTokenIsAMissMiniredis), so
// Invalidate must not report it removed either, nor record the version as
// invalidated and announce it. tokentest.TestStore's TTL subtest found this
// on real servers (Redis 7.0, standalone and Cluster), in about one run of 15.
func TestExpiringTokenIsNotInvalidated(t *testing.T) {
	mr := miniredis.RunT(t)
	ctx := context.Background()
	c, err := newCache(t, newClient(t, mr.Addr()), rediscache.Options{Source: token.Options{Logger: quiet}}).Credential("c")
	if err != nil {
		t.Fatal(err)
	}
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
	if _, err := c.Load(ctx); !errors.Is(err, token.ErrNotFound) {
		t.Fatalf("Load with PTTL 0 = %v; want ErrNotFound", err)
	}
	if ok, err := c.Invalidate(ctx, v); ok || err != nil {
		t.Errorf("Invalidate(%d) with PTTL 0 = %v, %v; want false, nil, as Load saw no token", v, ok, err)
	}
	sh, err := c.Load(ctx)
	if errors.Is(err, token.ErrInvalidated) || sh.Fence.Invalidated != 0 {
		t.Errorf("Load after Invalidate with PTTL 0 = %v, Fence %+v; want a plain miss, nothing invalidated", err, sh.Fence)
	}
}
