package rediscache_test

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// TestStalledHolderKnowsItLostTheLock: with the default LockTTL
// (now 2 s, was 10 s), a holder cut off from Redis must declare its lock
// lost (Held.Context done) at 0.9 of the TTL, before another instance can
// take it (package lock's contract; rediscache.Options.LockTTL: "a holder
// that cannot reach Redis for 0.9 of it loses the lock"). The keep-alive
// calls Refresh synchronously and its expiry timer is only looked at between
// refreshes; a go-redis client without ContextTimeoutEnabled (go-redis's
// default) blocks a Refresh for ReadTimeout (3 s) whatever the context's
// deadline. With 10 s that fit inside 9 s; with 2 s it does not: another
// instance holds the lock at 2 s while the cut-off holder's fetch still
// runs under a live lock context until about 3 s.
func TestStalledHolderKnowsItLostTheLock(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	px := newProxy(t, mr.Addr())
	cut := redis.NewClient(&redis.Options{Addr: px.addr()}) // go-redis defaults
	t.Cleanup(func() { _ = cut.Close() })
	other := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = other.Close() })
	mk := func(rdb redis.UniversalClient) *rediscache.Credential {
		c, err := rediscache.New(rdb, rediscache.Options{Prefix: "zz:", Source: token.Options{Logger: quiet}})
		if err != nil {
			t.Fatal(err)
		}
		cred, err := c.Credential("c")
		if err != nil {
			t.Fatal(err)
		}
		return cred
	}
	a, b := mk(cut), mk(other)
	ctx := context.Background()
	held, err := a.TryLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Release(ctx) }()
	px.stall() // A is cut off from Redis, its connection stays open
	start := time.Now()
	defer px.unstall()
	for time.Since(start) < 4*time.Second {
		h, err := b.TryLock(ctx)
		if err == nil {
			aHolds := held.Context().Err() == nil
			_ = h.Release(ctx)
			if aHolds {
				t.Fatalf("B obtained the lock %v after A was cut off while A's lock context was still live", time.Since(start).Round(10*time.Millisecond))
			}
			t.Logf("A declared its lock lost before B took it %v after the cut", time.Since(start).Round(10*time.Millisecond))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("B never obtained the lock")
}
