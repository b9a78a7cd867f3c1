package rediscache_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// durabilityErrors returns every *DurabilityError in err's tree (one per
// server of a Cluster).
func durabilityErrors(err error) []*rediscache.DurabilityError {
	var out []*rediscache.DurabilityError
	switch e := err.(type) {
	case *rediscache.DurabilityError:
		out = append(out, e)
	case interface{ Unwrap() []error }:
		for _, err := range e.Unwrap() {
			out = append(out, durabilityErrors(err)...)
		}
	case interface{ Unwrap() error }:
		out = durabilityErrors(e.Unwrap())
	}
	return out
}

// configSet sets a server's configuration for one test, restored when the
// test ends.
func configSet(t *testing.T, admin *redis.Client, name, value string) {
	t.Helper()
	ctx := context.Background()
	old, err := admin.ConfigGet(ctx, name).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigSet(ctx, name, value).Err(); err != nil {
		t.Fatalf("CONFIG SET %s %q: %v", name, value, err)
	}
	t.Cleanup(func() {
		if err := admin.ConfigSet(context.Background(), name, old[name]).Err(); err != nil {
			t.Errorf("restoring %s %q: %v", name, old[name], err)
		}
	})
}

// checkVerdict checks CheckDurability's verdict on the server at addr.
func checkVerdict(t *testing.T, cache *rediscache.Cache, addr string, evicts, persistent bool) {
	t.Helper()
	err := cache.CheckDurability(t.Context())
	if !evicts && persistent {
		if err != nil {
			t.Fatalf("CheckDurability = %v; want nil", err)
		}
		return
	}
	var de *rediscache.DurabilityError
	if !errors.Is(err, rediscache.ErrNotDurable) || !errors.As(err, &de) || errors.Is(err, rediscache.ErrDurabilityUnknown) {
		t.Fatalf("CheckDurability = %v; want a *DurabilityError (ErrNotDurable)", err)
	}
	if de.Evicts() != evicts || de.Persistent() != persistent || de.Addr != addr {
		t.Errorf("%+v: Evicts %v, Persistent %v; want %v, %v, Addr %s", de, de.Evicts(), de.Persistent(), evicts, persistent, addr)
	}
}

// TestCheckDurabilityConfig: on a server of the test's own, each setting
// that can lose refresh state is reported, and the recommended ones pass.
func TestCheckDurabilityConfig(t *testing.T) {
	r := startRedis(t)
	admin := newClient(t, r.addr())
	cache := newCache(t, admin, rediscache.Options{Prefix: prefix(t)})
	check := func(t *testing.T, evicts, persistent bool) {
		t.Helper()
		checkVerdict(t, cache, r.addr(), evicts, persistent)
	}
	// startRedis runs with --appendonly no --save "": nothing persists.
	t.Run("no persistence", func(t *testing.T) { check(t, false, false) })
	t.Run("RDB snapshots only", func(t *testing.T) {
		configSet(t, admin, "save", "3600 1")
		check(t, false, false)
	})
	t.Run("AOF", func(t *testing.T) {
		configSet(t, admin, "appendonly", "yes")
		check(t, false, true)
		for _, policy := range []string{"volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl", "noeviction"} {
			t.Run(policy, func(t *testing.T) {
				configSet(t, admin, "maxmemory-policy", policy)
				check(t, false, true)
			})
		}
		for _, policy := range []string{"allkeys-lru", "allkeys-lfu", "allkeys-random"} {
			t.Run(policy, func(t *testing.T) {
				configSet(t, admin, "maxmemory-policy", policy)
				check(t, true, true)
			})
		}
		t.Run("appendfsync no", func(t *testing.T) {
			configSet(t, admin, "appendfsync", "no")
			check(t, false, false)
		})
		t.Run("appendfsync always", func(t *testing.T) {
			configSet(t, admin, "appendfsync", "always")
			check(t, false, true)
		})
	})
	t.Run("allkeys-lru without persistence", func(t *testing.T) {
		configSet(t, admin, "maxmemory-policy", "allkeys-lru")
		check(t, true, false)
		msg := cache.CheckDurability(t.Context()).Error()
		for _, want := range []string{"allkeys-lru", "noeviction or volatile-*", "appendonly no", "appendonly yes"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not say %q", msg, want)
			}
		}
	})
}

// TestCheckDurabilityTopologies: miniredis has no CONFIG command (as a
// managed service that disables it): unknown. The real topologies
// (scripts/redis-topology.sh) run without persistence: not durable, on
// every primary of a Cluster.
func TestCheckDurabilityTopologies(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		rdb := b.Client(t)
		err := newCache(t, rdb, rediscache.Options{Prefix: prefix(t)}).CheckDurability(t.Context())
		if b.Mini != nil {
			if !errors.Is(err, rediscache.ErrDurabilityUnknown) || errors.Is(err, rediscache.ErrNotDurable) || !strings.Contains(err.Error(), "unknown command") {
				t.Fatalf("CheckDurability on miniredis = %v; want ErrDurabilityUnknown (unknown command)", err)
			}
			return
		}
		if errors.Is(err, rediscache.ErrDurabilityUnknown) || !errors.Is(err, rediscache.ErrNotDurable) {
			t.Fatalf("CheckDurability = %v; want ErrNotDurable (the topology runs without persistence)", err)
		}
		primaries := 1
		if cc, ok := rdb.(*redis.ClusterClient); ok {
			var mu sync.Mutex
			primaries = 0
			_ = cc.ForEachMaster(t.Context(), func(context.Context, *redis.Client) error {
				mu.Lock()
				primaries++
				mu.Unlock()
				return nil
			})
		}
		des := durabilityErrors(err)
		addrs := map[string]bool{}
		for _, de := range des {
			addrs[de.Addr] = true
			if de.Persistent() || de.AppendOnly != "no" {
				t.Errorf("%+v: want appendonly no, not persistent", de)
			}
		}
		if len(des) != primaries || len(addrs) != primaries {
			t.Errorf("%d DurabilityErrors on %d servers; want one per primary (%d): %v", len(des), len(addrs), primaries, err)
		}
	})
}

// TestCheckDurabilityACL: a user without +config|get cannot tell (unknown,
// NOPERM); the rule that README's minimal ACL adds for it lets it.
func TestCheckDurabilityACL(t *testing.T) {
	r := startRedis(t)
	for _, c := range []struct {
		user  string
		extra []string
	}{{"durability-noconfig", nil}, {"durability-config", []string{"+config|get"}}} {
		rdb, p := aclUser(t, r.addr(), c.user)
		if len(c.extra) > 0 {
			args := []any{"ACL", "SETUSER", c.user}
			for _, e := range c.extra {
				args = append(args, e)
			}
			if err := newClient(t, r.addr()).Do(t.Context(), args...).Err(); err != nil {
				t.Fatal(err)
			}
		}
		err := newCache(t, rdb, rediscache.Options{Prefix: p}).CheckDurability(t.Context())
		if len(c.extra) == 0 {
			if !errors.Is(err, rediscache.ErrDurabilityUnknown) || errors.Is(err, rediscache.ErrNotDurable) || !strings.Contains(err.Error(), "NOPERM") {
				t.Errorf("CheckDurability as %s = %v; want ErrDurabilityUnknown (NOPERM)", c.user, err)
			}
			if strings.Contains(err.Error(), "password") {
				t.Errorf("the error holds the password: %v", err)
			}
			continue
		}
		if !errors.Is(err, rediscache.ErrNotDurable) || errors.Is(err, rediscache.ErrDurabilityUnknown) {
			t.Errorf("CheckDurability as %s = %v; want ErrNotDurable", c.user, err)
		}
	}
}

// TestDurabilityWarning: the first use of a Cache's refresh state logs one
// warning, whatever the number of calls and callers, naming the problem
// and the fix and no secret; a durable server logs none.
func TestDurabilityWarning(t *testing.T) {
	r := startRedis(t)
	durable := startRedis(t, "--appendonly", "yes")
	for _, c := range []struct {
		name, addr, want string // want: the warning's message, "" for none
	}{
		{"miniredis", miniAddr(t), "could not check"},
		{"no persistence", r.addr(), "may lose refresh state"},
		{"durable", durable.addr(), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs syncBuffer
			rdb := newClient(t, c.addr)
			const caches, callers, calls = 2, 8, 5
			secret := "refresh-secret-" + strings.Repeat("x", 16)
			for i := range caches {
				o := rediscache.Options{Prefix: prefix(t), Source: token.Options{Logger: logs.Logger()}}
				cred, err := newCache(t, rdb, o).Credential("c")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := cred.SeedRefresh(t.Context(), secret); err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				for range callers {
					wg.Go(func() {
						for range calls {
							if st, err := cred.LoadRefresh(t.Context()); err != nil || st.Value != secret {
								t.Errorf("LoadRefresh = generation %d, %v", st.Generation, err)
							}
						}
					})
				}
				wg.Wait()
				want := i + 1 // one per Cache
				if c.want == "" {
					want = 0
				}
				if n := logs.Count("WARN", ""); n != want {
					t.Fatalf("after %d Caches × %d callers × %d loads: %d warnings; want %d:\n%s", i+1, callers, calls, n, want, logs.String())
				}
			}
			out := logs.String()
			if c.want != "" && logs.Count("WARN", c.want) != caches {
				t.Errorf("want %d warnings saying %q:\n%s", caches, c.want, out)
			}
			for _, fix := range []string{"noeviction", "appendonly yes", "WAIT"} {
				if c.want != "" && !strings.Contains(out, fix) {
					t.Errorf("the warning does not say %q:\n%s", fix, out)
				}
			}
			if strings.Contains(out, "refresh-secret") {
				t.Errorf("the log holds the refresh state:\n%s", out)
			}
		})
	}
}

// TestDurabilityWarningSource: a Source of a Redeemer triggers the check
// through its RefreshStore (SeedRefresh, then the refresh's LoadRefresh).
func TestDurabilityWarningSource(t *testing.T) {
	var logs syncBuffer
	o := rediscache.Options{Prefix: prefix(t), Source: token.Options{Logger: logs.Logger()}}
	up := tokentest.NewRotating(time.Hour)
	s := source(t, newClient(t, miniAddr(t)), o, up)
	if err := s.SeedRefresh(t.Context(), up.Authorize()); err != nil {
		t.Fatal(err)
	}
	if tok, err := s.Token(t.Context()); err != nil || !up.Valid(tok.Value) {
		t.Fatalf("Token = %v", err)
	}
	if n := logs.Count("WARN", "could not check that Redis keeps refresh state durably"); n != 1 {
		t.Errorf("%d warnings; want 1:\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "rt-") || strings.Contains(logs.String(), "at-") {
		t.Errorf("the log holds a token:\n%s", logs.String())
	}
}

// TestDurabilityCheckUnreachable: a check that cannot run (nothing
// listens) is neither verdict and logs no warning.
func TestDurabilityCheckUnreachable(t *testing.T) {
	var logs syncBuffer
	rdb := redis.NewClient(&redis.Options{Addr: closedAddr(t), MaxRetries: -1})
	defer rdb.Close()
	cache := newCache(t, rdb, rediscache.Options{Prefix: prefix(t), Source: token.Options{Logger: logs.Logger()}})
	err := cache.CheckDurability(t.Context())
	if err == nil || errors.Is(err, rediscache.ErrNotDurable) || errors.Is(err, rediscache.ErrDurabilityUnknown) {
		t.Fatalf("CheckDurability with nothing listening = %v; want an error matching neither sentinel", err)
	}
	cred, _ := cache.Credential("c")
	if _, err := cred.LoadRefresh(t.Context()); err == nil {
		t.Fatal("LoadRefresh with nothing listening succeeded")
	}
	if n := logs.Count("WARN", ""); n != 0 {
		t.Errorf("%d warnings; want none:\n%s", n, logs.String())
	}
}

func miniAddr(t *testing.T) string { return miniredis.RunT(t).Addr() }

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}
