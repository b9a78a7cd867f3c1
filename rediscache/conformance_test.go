package rediscache_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// conformanceLockTTL is long enough that a held lock's keep-alive never
// misses under -race on a busy machine, and short enough to wait for.
const conformanceLockTTL = 300 * time.Millisecond

// TestConformance runs tokentest.TestStore on every backend: miniredis
// always, the real standalone server, Cluster and Sentinel when their
// variables are set, and miniredis again with tokens sealed at rest.
func TestConformance(t *testing.T) {
	have := map[string]backend{}
	for _, b := range redistest.Backends(t) {
		have[b.Name] = b
	}
	sealed := &rediscache.Keyring{Current: "k1", Keys: map[string][]byte{"k1": make([]byte, 32)}}
	for _, tc := range []struct {
		name, backend, env string
		enc                *rediscache.Keyring
	}{
		{"miniredis", "miniredis", "", nil},
		{"redis", "redis", redistest.Env, nil},
		{"cluster", "cluster", redistest.ClusterEnv, nil},
		{"sentinel", "sentinel", redistest.SentinelEnv, nil},
		{"miniredis-sealed", "miniredis", "", sealed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, ok := have[tc.backend]
			if !ok {
				t.Skipf("no %s: set %s (scripts/redis-topology.sh starts one)", tc.backend, tc.env)
			}
			tokentest.TestStore(t, conformanceHarness(t, b, tc.enc))
		})
	}
}

// conformanceHarness opens every handle with a Cache and client of its own,
// as another instance would. All credentials of one backend share a prefix,
// and so a notification channel: a watcher must pick its own credential's
// events out of it.
func conformanceHarness(t *testing.T, b backend, enc *rediscache.Keyring) tokentest.StoreHarness {
	p := prefix(t)
	var n atomic.Int64
	h := tokentest.StoreHarness{
		New: func(t *testing.T) tokentest.Credential {
			name := fmt.Sprintf("conformance:%d", n.Add(1))
			rdb := b.Client(t)
			return tokentest.Credential{
				Open: func() token.Store {
					c, err := newCache(t, b.Client(t), rediscache.Options{
						Prefix: p, LockTTL: conformanceLockTTL, Encryption: enc, Source: token.Options{Logger: quiet},
					}).Credential(name)
					if err != nil {
						t.Fatal(err)
					}
					return c
				},
				Corrupt: func() {
					key := "{" + p + name + "}:token"
					if err := rdb.Set(context.Background(), key, "garbage", time.Minute).Err(); err != nil {
						t.Fatalf("SET %s: %v", key, err)
					}
				},
			}
		},
		LockTTL: conformanceLockTTL,
	}
	if b.Mini != nil {
		h.Advance = b.Mini.FastForward
	}
	return h
}
