package rediscache_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

func TestNameValidation(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer rdb.Close()
	st := newCache(t, rdb, rediscache.Options{})
	for _, name := range []string{"", "a{b", "a}b", "a b", "a\nb", strings.Repeat("x", rediscache.MaxNameLen+1)} {
		if _, err := st.Credential(name); !errors.Is(err, rediscache.ErrInvalidName) {
			t.Errorf("Credential(%q) err = %v, want ErrInvalidName", name, err)
		}
	}
	for _, name := range []string{"wechat:wx1234", "a", "oauth2/partner-api", strings.Repeat("x", rediscache.MaxNameLen)} {
		if _, err := st.Credential(name); err != nil {
			t.Errorf("Credential(%q): %v", name, err)
		}
	}
}

func TestKeysShareOneHashTag(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		rdb := b.Client(t)
		p := prefix(t)
		st := newCache(t, rdb, rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}})
		c, err := st.Credential("wechat:wx1")
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		v, err := c.NextVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Save(ctx, token.Shared{Value: "tokenvalue-0123456789", Version: v, TTL: time.Minute, Lifetime: time.Minute}); err != nil {
			t.Fatal(err)
		}
		tag := "{" + p + "wechat:wx1}"
		for k, want := range map[string]int64{tag + ":token": 1, tag + ":fence": 1, tag + ":lock": 0} {
			if n, err := rdb.Exists(ctx, k).Result(); err != nil || n != want {
				t.Errorf("EXISTS %s = %d, %v; want %d", k, n, err, want)
			}
		}
		if b.Mini == nil {
			slots := map[int64]bool{}
			for _, k := range []string{"{" + p + "wechat:wx1}:token", "{" + p + "wechat:wx1}:lock", "{" + p + "wechat:wx1}:fence"} {
				s, err := rdb.ClusterKeySlot(ctx, k).Result()
				if err != nil {
					t.Logf("CLUSTER KEYSLOT: %v (not a cluster)", err)
					return
				}
				slots[s] = true
			}
			if len(slots) != 1 {
				t.Errorf("keys span %d slots", len(slots))
			}
		}
	})
}

// TestFencedSave: a write with an older version never overwrites a newer one,
// even after the token expired or was invalidated.
func TestFencedSave(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		st := newCache(t, b.Client(t), rediscache.Options{Prefix: prefix(t)})
		c, _ := st.Credential("c")
		v1, err := c.NextVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		v2, _ := c.NextVersion(ctx)
		if v2 <= v1 {
			t.Fatalf("versions %d then %d do not grow", v1, v2)
		}
		newer := token.Shared{Value: "newer-token-0123456789", Version: v2, TTL: time.Minute, Lifetime: time.Minute}
		older := token.Shared{Value: "older-token-0123456789", Version: v1, TTL: time.Minute, Lifetime: time.Minute}
		if err := c.Save(ctx, newer); err != nil {
			t.Fatal(err)
		}
		if err := c.Save(ctx, older); !errors.Is(err, token.ErrFenced) {
			t.Fatalf("late Save err = %v, want ErrFenced", err)
		}
		if err := c.Save(ctx, newer); !errors.Is(err, token.ErrFenced) {
			t.Fatalf("repeated Save err = %v, want ErrFenced", err)
		}
		got, err := c.Load(ctx)
		if err != nil || got.Value != newer.Value || got.Version != v2 {
			t.Fatalf("Load = %+v, %v; want the newer token", got, err)
		}
		// Invalidating with a stale version does nothing; with the current
		// one it removes the token, and the old writer still cannot write.
		if ok, err := c.Invalidate(ctx, v1); ok || err != nil {
			t.Fatalf("Invalidate(old) = %v, %v", ok, err)
		}
		if ok, err := c.Invalidate(ctx, v2); !ok || err != nil {
			t.Fatalf("Invalidate(current) = %v, %v", ok, err)
		}
		if _, err := c.Load(ctx); !errors.Is(err, token.ErrNotFound) || !errors.Is(err, token.ErrInvalidated) {
			t.Fatalf("Load after Invalidate: %v, want ErrNotFound and ErrInvalidated", err)
		}
		if err := c.Save(ctx, older); !errors.Is(err, token.ErrFenced) {
			t.Fatalf("late Save after Invalidate err = %v, want ErrFenced", err)
		}
	})
}

// TestVersionsSurviveFlush: after the fence counter is lost or rolled back,
// new versions are still greater than the old ones, so a writer from before
// cannot win.
func TestVersionsSurviveFlush(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		c, _ := newCache(t, rdb, rediscache.Options{Prefix: p}).Credential("c")
		old, err := c.NextVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A failover rolled the counter back (or a flush lost it).
		if err := rdb.HSet(ctx, "{"+p+"c}:fence", "next", 5).Err(); err != nil {
			t.Fatal(err)
		}
		if b.Mini != nil {
			b.Mini.SetTime(time.Now().Add(time.Second))
			defer b.Mini.SetTime(time.Time{})
		} else {
			time.Sleep(2 * time.Millisecond) // the server clock must tick past the old version
		}
		v, err := c.NextVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v <= old {
			t.Errorf("version after flush %d <= version before %d", v, old)
		}
	})
}

func TestMalformedValueIsAMiss(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		key := "{" + p + "c}:token"
		for _, tc := range []struct {
			name string
			put  func() error
		}{
			{"garbage", func() error { return rdb.Set(ctx, key, "garbage", time.Minute).Err() }},
			{"future format", func() error { return rdb.Set(ctx, key, "2|5|1000|tok", time.Minute).Err() }},
			{"truncated", func() error { return rdb.Set(ctx, key, "1|5|10", time.Minute).Err() }},
			{"empty token", func() error { return rdb.Set(ctx, key, "1|5|1000|", time.Minute).Err() }},
			{"no ttl", func() error { return rdb.Set(ctx, key, "1|5|1000|tokentokentoken", 0).Err() }},
			{"huge", func() error { return rdb.Set(ctx, key, "1|5|1000|"+strings.Repeat("x", 1<<20), time.Minute).Err() }},
			{"wrong type", func() error { return rdb.HSet(ctx, key, "a", "b").Err() }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rdb.Del(ctx, key)
				if err := tc.put(); err != nil {
					t.Fatal(err)
				}
				st := newCache(t, rdb, rediscache.Options{Prefix: p})
				c, _ := st.Credential("c")
				if _, err := c.Load(ctx); !errors.Is(err, token.ErrMalformed) {
					t.Fatalf("Load err = %v, want ErrMalformed", err)
				}
				// A Source treats it as a miss and overwrites it.
				var logs syncBuffer
				st = newCache(t, rdb, rediscache.Options{Prefix: p, Source: token.Options{Logger: jsonLogger(&logs)}})
				up := newUpstream(time.Hour)
				src, err := st.Source("c", up)
				if err != nil {
					t.Fatal(err)
				}
				defer src.Close()
				tok, err := src.Token(ctx)
				if err != nil || !up.Valid(tok.Value) {
					t.Fatalf("Token = %v, %v", tok, err)
				}
				if got, err := c.Load(ctx); err != nil || got.Value != tok.Value {
					t.Fatalf("stored after refresh: %v, %v", got, err)
				}
				if !strings.Contains(logs.String(), "unreadable shared token") {
					t.Errorf("no warning logged: %s", logs.String())
				}
			})
		}
	})
}

func TestLimiter(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		st := newCache(t, b.Client(t), rediscache.Options{Prefix: prefix(t)})
		l, err := st.Limiter("wechat:wx1", "force_refresh", rediscache.Limit{PerDay: 3, Every: 40 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		// Another instance's Limiter shares the count.
		other, _ := newCache(t, b.Client(t), rediscache.Options{Prefix: st.Prefix()}).Limiter("wechat:wx1", "force_refresh", rediscache.Limit{PerDay: 3, Every: 40 * time.Millisecond})
		allowed := 0
		deadline := time.Now().Add(500 * time.Millisecond)
		var last time.Time
		for time.Now().Before(deadline) {
			for _, lim := range []*rediscache.Limiter{l, other} {
				ok, err := lim.Allow(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					if !last.IsZero() && time.Since(last) < 35*time.Millisecond {
						t.Errorf("allowed %v after the previous one", time.Since(last))
					}
					last = time.Now()
					allowed++
				}
			}
			time.Sleep(5 * time.Millisecond) // callers over time
		}
		if allowed != 3 {
			t.Errorf("allowed %d times, want 3 (the daily limit)", allowed)
		}
		if _, err := st.Limiter("x", "a b", rediscache.Limit{PerDay: 1}); err == nil {
			t.Error("bad action name accepted")
		}
	})
}
