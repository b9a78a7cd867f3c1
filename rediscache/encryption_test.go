package rediscache_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// TestEncryptionAtRest: with a Keyring, the token is not in Redis in any
// form a reader of the raw key can use; instances with the key share it,
// rotation reads old values and writes new ones, and an instance without the
// key treats the value as a miss.
func TestEncryptionAtRest(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		o := testOptions(p)
		o.Encryption = &rediscache.Keyring{Current: "k1", Keys: map[string][]byte{"k1": key(1)}}
		up := newUpstream(time.Hour)
		up.TokenLen = 512
		a := source(t, rdb, o, up)
		tok, err := a.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := rdb.Get(ctx, "{"+p+"c}:token").Result()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(raw, "e|") || strings.Contains(raw, tok.Value[:16]) {
			t.Fatalf("raw value is not sealed: %.60s", raw)
		}
		if b.Mini == nil {
			dump, err := rdb.Dump(ctx, "{"+p+"c}:token").Result()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(dump, tok.Value[:16]) {
				t.Fatal("DUMP shows the token")
			}
		}
		// Rotation, step 2: another instance writes with k2 and still reads k1.
		o2 := o
		o2.Encryption = &rediscache.Keyring{Current: "k2", Keys: map[string][]byte{"k1": key(1), "k2": key(2)}}
		bsrc := source(t, b.Client(t), o2, up)
		if got, err := bsrc.Token(ctx); err != nil || got.Value != tok.Value {
			t.Fatalf("k1 value read with k1+k2: %v, %v", got, err)
		}
		_ = a.Close() // every instance now writes with k2
		if err := bsrc.Invalidate(ctx, tok.Value); err != nil {
			t.Fatal(err)
		}
		newer, err := bsrc.Token(ctx)
		if err != nil || newer.Value == tok.Value {
			t.Fatalf("refresh after rotation: %v, %v", newer, err)
		}
		// The refresher serves the new token at once and saves it just
		// after: wait for the save.
		scenario.Retry(2*time.Second, time.Millisecond, func() bool {
			raw, _ = rdb.Get(ctx, "{"+p+"c}:token").Result()
			return raw != ""
		})
		if !strings.HasPrefix(raw, "e|") || !strings.Contains(raw, "|k2|") {
			t.Errorf("value after rotation is not sealed with k2: %.40s", raw)
		}
		// An instance without the key reads a miss, never the token.
		cred, err := newCache(t, rdb, rediscache.Options{Prefix: p,
			Encryption: &rediscache.Keyring{Current: "k1", Keys: map[string][]byte{"k1": key(1)}}}).Credential("c")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cred.Load(ctx); !errors.Is(err, token.ErrMalformed) {
			t.Errorf("Load without the key: %v, want ErrMalformed", err)
		}
		wrong, _ := newCache(t, rdb, rediscache.Options{Prefix: p,
			Encryption: &rediscache.Keyring{Current: "k2", Keys: map[string][]byte{"k2": key(9)}}}).Credential("c")
		if _, err := wrong.Load(ctx); !errors.Is(err, token.ErrMalformed) {
			t.Errorf("Load with a wrong key: %v, want ErrMalformed", err)
		}
	})
}

func TestBadKeyring(t *testing.T) {
	unreachable := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // New does no I/O
	defer unreachable.Close()
	for _, k := range []*rediscache.Keyring{
		{Current: "k1", Keys: map[string][]byte{"k1": []byte("short")}},
		{Current: "k2", Keys: map[string][]byte{"k1": key(1)}},
		{Current: "a|b", Keys: map[string][]byte{"a|b": key(1)}},
	} {
		if _, err := rediscache.New(unreachable, rediscache.Options{Encryption: k}); err == nil {
			t.Errorf("keyring %q accepted", k.Current)
		}
	}
}

// TestEncryptionRollingDeploy turns encryption on the documented way, with
// instances of each step side by side, on a strict upstream with short
// tokens: no instance calls another's value malformed, so no step fetches
// more than its refresh periods. Then a clear-text value injected into Redis
// is refused once AcceptPlain is gone.
func TestEncryptionRollingDeploy(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		p := prefix(t)
		const lifetime = 400 * time.Millisecond
		up := newUpstream(lifetime)
		keys := map[string][]byte{"k1": key(1)}
		steps := []*rediscache.Keyring{
			nil, // before: no encryption
			{Current: "k1", Keys: keys, WritePlain: true, AcceptPlain: true},
			{Current: "k1", Keys: keys, AcceptPlain: true},
			{Current: "k1", Keys: keys},
		}
		var logs syncBuffer
		// Each phase runs neighbouring steps side by side, as a rolling
		// deploy does, for 2 lifetimes; AcceptPlain goes only after a
		// phase with every instance writing sealed values.
		for _, phase := range [][2]int{{0, 1}, {1, 2}, {2, 2}, {2, 3}} {
			var srcs []*token.Source
			for _, k := range []*rediscache.Keyring{steps[phase[0]], steps[phase[1]]} {
				o := testOptions(p)
				o.Encryption = k
				o.Source.Logger = jsonLogger(&logs)
				srcs = append(srcs, instances(t, b, 2, up, o)...)
			}
			before := up.Issued()
			res := tokentest.Load(ctx, srcs, tokentest.LoadConfig{Goroutines: 8, Duration: 2 * lifetime, Think: think(), Upstream: up})
			for _, s := range srcs {
				_ = s.Close()
			}
			if res.Errors > 0 {
				t.Errorf("steps %v: %d caller errors", phase, res.Errors)
			}
			// 2 lifetimes fit 2 refresh periods (0.8 lifetime) plus the
			// token carried over from the previous phase.
			if n := up.Issued() - before; n > 4 {
				t.Errorf("steps %v: upstream issued %d tokens in 2 lifetimes; instances refetched each other's values", phase, n)
			}
		}
		if n := countLogs(logs.String(), "WARN", "unreadable shared token"); n > 0 {
			t.Errorf("%d values called unreadable during the rollout", n)
		}
		// Finally, a clear-text value injected into Redis is not served.
		o := testOptions(p)
		o.Encryption = steps[3]
		c, _ := newCache(t, b.Client(t), o).Credential("c")
		rdb := b.Client(t)
		rdb.Set(ctx, "{"+p+"c}:token", "1|1|3600000|injected-token-0123456789", time.Hour)
		if _, err := c.Load(ctx); !errors.Is(err, token.ErrMalformed) {
			t.Errorf("clear text with a Keyring: %v, want ErrMalformed", err)
		}
	})
}

// TestWritePlainReadsItsOwnWrites: WritePlain implies AcceptPlain, so that
// instances of the first rollout step read each other (second review).
func TestWritePlainReadsItsOwnWrites(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		o := testOptions(prefix(t))
		o.Encryption = &rediscache.Keyring{Current: "k1", Keys: map[string][]byte{"k1": key(1)}, WritePlain: true}
		up := newUpstream(time.Hour)
		for _, s := range instances(t, b, 3, up, o) {
			if _, err := s.Token(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if up.Issued() != 1 {
			t.Errorf("upstream issued %d, want 1", up.Issued())
		}
	})
}
