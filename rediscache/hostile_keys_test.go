package rediscache_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestHostileOrderKey: whatever sits in a credential's :order key (not a
// number, too long, negative, of another type), a push is stored and the
// next push still compares against the order it wrote: a garbage order can
// neither block pushes nor be taken for a newer one.
func TestHostileOrderKey(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		p := redistest.Prefix(t)
		c, err := rediscache.New(rdb, rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		key := "{" + p + "ticket}:order"
		for name, plant := range map[string]func() error{
			"text":      func() error { return rdb.Set(ctx, key, "not-a-number", time.Hour).Err() },
			"17 digits": func() error { return rdb.Set(ctx, key, "99999999999999999", time.Hour).Err() },
			"negative":  func() error { return rdb.Set(ctx, key, "-5", time.Hour).Err() },
			"hash":      func() error { return rdb.HSet(ctx, key, "a", "1").Err() },
		} {
			t.Run(name, func(t *testing.T) {
				_ = rdb.Del(ctx, key, "{"+p+"ticket}:token").Err()
				if err := plant(); err != nil {
					t.Fatal(err)
				}
				s, err := c.Source("ticket", token.AwaitPush(nil))
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				if ok, err := s.Offer(ctx, token.Push{Value: "ticket-0000000000000100", Order: 100, Lifetime: time.Hour, MaxLead: 1000}); !ok || err != nil {
					t.Fatalf("push over a hostile order: %v, %v; want stored", ok, err)
				}
				if ok, err := s.Offer(ctx, token.Push{Value: "ticket-0000000000000099", Order: 99, Lifetime: time.Hour}); ok || err != nil {
					t.Errorf("older push after it: %v, %v; want refused", ok, err)
				}
			})
		}
	})
}

// TestHostileRefreshState: a refresh state in Redis that this code did not
// write (garbage, another generation's sealed value, a bare generation) is
// never redeemed: LoadRefresh says ErrMalformed and the Source fetches
// nothing from the authorization server.
func TestHostileRefreshState(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		p := redistest.Prefix(t)
		c, err := rediscache.New(rdb, rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		key := "{" + p + "authorizer}:refresh"
		for name, fields := range map[string][]any{
			"garbage value":    {"gen", "3", "v", "garbage"},
			"other generation": {"gen", "3", "v", "1|2|1|rt-0123456789abcdef"},
			"bad generation":   {"gen", "x", "v", "1|3|1|rt-0123456789abcdef"},
		} {
			t.Run(name, func(t *testing.T) {
				_ = rdb.Del(ctx, key).Err()
				if err := rdb.HSet(ctx, key, fields...).Err(); err != nil {
					t.Fatal(err)
				}
				cred, err := c.Credential("authorizer")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := cred.LoadRefresh(ctx); !errors.Is(err, token.ErrMalformed) {
					t.Errorf("LoadRefresh: %v, want ErrMalformed", err)
				}
				up := tokentest.NewRotating(time.Hour)
				s, err := token.NewSource("authorizer", up, cred, cred, token.Options{Logger: quiet})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				if _, err := s.Token(ctx); err == nil {
					t.Error("Token with a hostile refresh state succeeded")
				}
				if n := up.Redemptions(); n != 0 {
					t.Errorf("%d redemptions of a hostile refresh state, want 0", n)
				}
			})
		}
	})
}
