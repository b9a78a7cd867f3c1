package rediscache_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
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
		a, err := rediscache.New(rdb, o).Source("c", up)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
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
		bsrc, err := rediscache.New(b.Client(t), o2).Source("c", up)
		if err != nil {
			t.Fatal(err)
		}
		defer bsrc.Close()
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
		raw, _ = rdb.Get(ctx, "{"+p+"c}:token").Result()
		if !strings.HasPrefix(raw, "e|") || !strings.Contains(raw, "|k2|") {
			t.Errorf("value after rotation is not sealed with k2: %.40s", raw)
		}
		// An instance without the key reads a miss, never the token.
		cred, err := rediscache.New(rdb, rediscache.Options{Prefix: p,
			Encryption: &rediscache.Keyring{Current: "k1", Keys: map[string][]byte{"k1": key(1)}}}).Credential("c")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cred.Load(ctx); !errors.Is(err, token.ErrMalformed) {
			t.Errorf("Load without the key: %v, want ErrMalformed", err)
		}
		wrong, _ := rediscache.New(rdb, rediscache.Options{Prefix: p,
			Encryption: &rediscache.Keyring{Current: "k2", Keys: map[string][]byte{"k2": key(9)}}}).Credential("c")
		if _, err := wrong.Load(ctx); !errors.Is(err, token.ErrMalformed) {
			t.Errorf("Load with a wrong key: %v, want ErrMalformed", err)
		}
	})
}

func TestBadKeyring(t *testing.T) {
	for _, k := range []*rediscache.Keyring{
		{Current: "k1", Keys: map[string][]byte{"k1": []byte("short")}},
		{Current: "k2", Keys: map[string][]byte{"k1": key(1)}},
		{Current: "a|b", Keys: map[string][]byte{"a|b": key(1)}},
	} {
		if _, err := rediscache.New(nil, rediscache.Options{Encryption: k}).Source("c", newUpstream(time.Hour)); err == nil {
			t.Errorf("keyring %q accepted", k.Current)
		}
	}
}
