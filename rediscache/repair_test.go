package rediscache_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// TestWrongTypeKeysAreRepaired: garbage of the wrong type (or a lock without
// a TTL) under any of a credential's keys does not wedge it: a Source gets a
// token, and the key works again. A rebuilt fence still refuses a late
// refresher's older version.
func TestWrongTypeKeysAreRepaired(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		for _, key := range []string{"fence", "backoff", "lock", "limit:force_refresh"} {
			for _, garbage := range []string{"list", "string without TTL"} {
				t.Run(key+"/"+garbage, func(t *testing.T) {
					p := prefix(t)
					tag := "{" + p + "c}:"
					st := newCache(t, rdb, testOptions(p))
					c, _ := st.Credential("c")
					// A token with a known version, written before the garbage.
					v, _ := c.NextVersion(ctx)
					old := token.Shared{Value: "stored-token-0123456789", Version: v, TTL: time.Hour, Lifetime: time.Hour}
					if err := c.Save(ctx, old); err != nil {
						t.Fatal(err)
					}
					if _, err := c.Invalidate(ctx, v); err != nil {
						t.Fatal(err)
					}
					if err := c.Save(ctx, token.Shared{Value: "newer-token-0123456789", Version: v + 1, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
						t.Fatal(err)
					}
					rdb.Del(ctx, tag+key)
					var err error
					if garbage == "list" {
						err = rdb.LPush(ctx, tag+key, "garbage").Err()
					} else {
						err = rdb.Set(ctx, tag+key, "garbage", 0).Err()
					}
					if err != nil {
						t.Fatal(err)
					}
					src, err := st.Source("c", newUpstream(time.Hour))
					if err != nil {
						t.Fatal(err)
					}
					defer src.Close()
					tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					defer cancel()
					tok, err := src.Token(tctx)
					if err != nil {
						t.Fatalf("Token with garbage under :%s: %v", key, err)
					}
					if tok.Value != "newer-token-0123456789" {
						t.Errorf("Token = %v, want the stored token", tok)
					}
					// Every operation works on the key again.
					if err := src.Invalidate(ctx, tok.Value); err != nil {
						t.Fatal(err)
					}
					if tok, err = src.Token(tctx); err != nil {
						t.Fatalf("refresh after repair: %v", err)
					}
					if _, err := c.LoadBackoff(ctx); err != nil {
						t.Errorf("LoadBackoff: %v", err)
					}
					lim, err := st.Limiter("c", "force_refresh", rediscache.Limit{PerDay: 5})
					if err != nil {
						t.Fatal(err)
					}
					if ok, err := lim.Allow(ctx); err != nil || !ok {
						t.Errorf("Limiter.Allow = %v, %v", ok, err)
					}
					// A late refresher with the version written before the
					// garbage is still fenced.
					err = c.Save(ctx, token.Shared{Value: "late-token-0123456789", Version: v + 1, TTL: time.Hour, Lifetime: time.Hour})
					if !errors.Is(err, token.ErrFenced) {
						t.Errorf("late save of version %d: %v, want ErrFenced", v+1, err)
					}
				})
			}
		}
	})
}

// TestFenceRebuiltFromToken: a fence of the wrong type is rebuilt from the
// stored token's version, so a save older than the stored token is refused.
func TestFenceRebuiltFromToken(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		c, _ := newCache(t, rdb, testOptions(p)).Credential("c")
		v, _ := c.NextVersion(ctx)
		if err := c.Save(ctx, token.Shared{Value: "stored-token-0123456789", Version: v + 10, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		rdb.Del(ctx, "{"+p+"c}:fence")
		rdb.Set(ctx, "{"+p+"c}:fence", "garbage", 0)
		if sh, err := c.Load(ctx); err != nil || sh.Fence.Written != v+10 {
			t.Errorf("Load = %+v, %v; want the token's version as written", sh.Fence, err)
		}
		if err := c.Save(ctx, token.Shared{Value: "late-token-0123456789", Version: v + 5, TTL: time.Hour, Lifetime: time.Hour}); !errors.Is(err, token.ErrFenced) {
			t.Errorf("save older than the stored token: %v, want ErrFenced", err)
		}
		if n, err := c.NextVersion(ctx); err != nil || n <= v+10 {
			t.Errorf("NextVersion = %d, %v; want above %d", n, err, v+10)
		}
	})
}

// TestStoreRefusesMisuse: a nil client and a LockTTL too short to work are
// refused by New with ErrInvalidConfig, not a panic or an outage on every
// call (TestRingIsRefused covers a Ring).
func TestStoreRefusesMisuse(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	for name, args := range map[string]struct {
		rdb  redis.UniversalClient
		opts rediscache.Options
	}{
		"nil client":  {nil, rediscache.Options{}},
		"LockTTL 1ms": {rdb, rediscache.Options{LockTTL: time.Millisecond}},
	} {
		if c, err := rediscache.New(args.rdb, args.opts); !errors.Is(err, token.ErrInvalidConfig) || c != nil {
			t.Errorf("%s: New: %v, %v, want nil and ErrInvalidConfig", name, c, err)
		}
		if _, err := rediscache.NewSource(args.rdb, "c", newUpstream(time.Hour), args.opts); !errors.Is(err, token.ErrInvalidConfig) {
			t.Errorf("%s: NewSource: %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := rediscache.NewSource(rdb, "c", nil, rediscache.Options{}); !errors.Is(err, token.ErrInvalidConfig) {
		t.Errorf("nil fetcher: %v, want ErrInvalidConfig", err)
	}
}

// TestBackoffRecordHoldsNoMessage: the shared backoff record keeps a class
// and a code, never an error's message, and a message that an earlier
// release stored is removed by the next write.
func TestBackoffRecordHoldsNoMessage(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		key := "{" + p + "c}:backoff"
		rdb.HSet(ctx, key, "failures", 1, "until", 0, "err", "secret=S3CRET-0123456789abcdef") // an earlier release's record
		src, err := newCache(t, rdb, testOptions(p)).Source("c", token.FetcherFunc(func(context.Context) (token.Token, error) {
			return token.Token{}, secretError{}
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		if _, err := src.Token(ctx); err == nil {
			t.Fatal("the failing fetch succeeded")
		}
		h, err := rdb.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		for f, v := range h {
			if strings.Contains(v, "S3CRET") || strings.Contains(v, "appsecret") {
				t.Errorf("field %s holds a message: %q", f, v)
			}
		}
		if h["class"] != token.ClassPermanent || h["code"] != "40125" {
			t.Errorf("record = %v, want class and code", h)
		}
	})
}

// secretError is a permanent fetcher error whose message holds a secret.
type secretError = scenario.SecretError

// TestBadFenceFieldsAreRepaired: fence fields that are not plain integers
// (or too large for the scripts' numbers) do not wedge Save, and a fence
// rebuilt while no token is stored still refuses a late refresher (second
// review).
func TestBadFenceFieldsAreRepaired(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		for _, garbage := range []string{"x", "", "1e300", "99999999999999999999"} {
			p := prefix(t)
			fence := "{" + p + "c}:fence"
			c, _ := newCache(t, rdb, testOptions(p)).Credential("c")
			late, _ := c.NextVersion(ctx)
			v2, _ := c.NextVersion(ctx)
			if err := c.Save(ctx, token.Shared{Value: "newer-token-0123456789", Version: v2, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Invalidate(ctx, v2); err != nil {
				t.Fatal(err)
			}
			rdb.HSet(ctx, fence, "written", garbage)
			err := c.Save(ctx, token.Shared{Value: "late-token-0123456789", Version: late, TTL: time.Hour, Lifetime: time.Hour})
			if !errors.Is(err, token.ErrFenced) {
				t.Errorf("written=%q: late save: %v, want ErrFenced", garbage, err)
			}
			v3, err := c.NextVersion(ctx)
			if err != nil {
				t.Fatalf("written=%q: NextVersion: %v", garbage, err)
			}
			if err := c.Save(ctx, token.Shared{Value: "fresh-token-0123456789", Version: v3, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
				t.Errorf("written=%q: a new version: %v", garbage, err)
			}
		}
	})
}

// TestForgedRecordsDoNotBlockForever: a backoff record longer than any
// backoff this code writes, and a limiter whose last use is in the future,
// are garbage, not a block that nothing ends (second review).
func TestForgedRecordsDoNotBlockForever(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		st := newCache(t, rdb, testOptions(p))
		c, _ := st.Credential("c")
		rdb.HSet(ctx, "{"+p+"c}:backoff", "failures", 1, "until", "99999999999999", "class", "permanent")
		if bo, err := c.LoadBackoff(ctx); err != nil || bo.Remaining != 0 {
			t.Errorf("forged backoff: %+v, %v; want none", bo, err)
		}
		rdb.HSet(ctx, "{"+p+"c}:limit:force", "last", "99999999999999")
		lim, _ := st.Limiter("c", "force", rediscache.Limit{PerDay: 5, Every: time.Minute})
		if ok, err := lim.Allow(ctx); err != nil || !ok {
			t.Errorf("limiter with a future last use: %v, %v; want allowed", ok, err)
		}
	})
}

// TestResetBackoffReachesOtherInstances: an instance that learned of a
// backoff re-reads the shared record at most once per RetryInterval, so
// another instance's ResetBackoff ends its wait too (second review).
func TestResetBackoffReachesOtherInstances(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		scenario.ResetBackoffReachesOtherInstances(t, redisBackend(t, b, testOptions(prefix(t))))
	})
}

// TestTokenOfAnotherAccountExpires: once the other account's token is gone,
// a Source fetches and the name is its account's (an IdentityKey or account
// format change, or a name moved to another app, heals within a lifetime).
func TestTokenOfAnotherAccountExpires(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		p := prefix(t)
		up := newUpstream(300 * time.Millisecond)
		a := identitySource(t, b, p, &idFetcher{up: up, account: "wechat:wxAAAA", secret: "secret-a-0123456789"})
		if _, err := a.Token(ctx); err != nil {
			t.Fatal(err)
		}
		_ = a.Close()
		nb := identitySource(t, b, p, &idFetcher{up: up, account: "wechat:wxBBBB", secret: "secret-b-0123456789"})
		// A caller trying again until A's token expires.
		var tok token.Token
		var err error
		if !scenario.Retry(3*time.Second, 10*time.Millisecond, func() bool {
			tok, err = nb.Token(ctx)
			return err == nil && up.Valid(tok.Value) || !errors.Is(err, token.ErrIdentityMismatch)
		}) || err != nil || !up.Valid(tok.Value) {
			t.Fatalf("Token = %v, %v", tok, err)
		}
	})
}
