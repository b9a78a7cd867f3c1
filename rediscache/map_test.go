package rediscache_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// upstreams is a fake upstream per key, shared by every instance.
type upstreams struct {
	lifetime time.Duration
	mu       sync.Mutex // guards ups
	ups      map[string]*tokentest.Upstream
}

func newUpstreams(lifetime time.Duration) *upstreams {
	return &upstreams{lifetime: lifetime, ups: make(map[string]*tokentest.Upstream)}
}

func (u *upstreams) get(key string) *tokentest.Upstream {
	u.mu.Lock()
	defer u.mu.Unlock()
	up := u.ups[key]
	if up == nil {
		up = tokentest.New(u.lifetime)
		u.ups[key] = up
	}
	return up
}

// calls returns the fetches of every key.
func (u *upstreams) calls() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, up := range u.ups {
		n += up.Calls()
	}
	return n
}

// credentialMap is one instance: a Cache on a client of its own and a Map of
// the credentials "tenant:<key>".
func credentialMap(t testing.TB, b backend, o rediscache.Options, ups *upstreams) *token.Map {
	t.Helper()
	cache := newCache(t, b.Client(t), o)
	m, err := token.NewMap(func(_ context.Context, key string) (*token.Source, error) {
		return cache.Source("tenant:"+key, ups.get(key))
	}, token.MapOptions{SweepInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling server or map state
	}
}

// TestMapOnRedis: two instances, each a Map of 200 credentials (50 on
// miniredis) whose keys spread over the slots of a Cluster. Each Map's
// Cache holds one subscription for all its credentials; every credential
// is fetched once for both. Instance B keeps 10 credentials in use: A evicts all of its
// credentials, which closes its subscription, and B the 190 it does not
// use. A's next use of a credential B kept fresh reads B's token: no fetch.
func TestMapOnRedis(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		const lifetime = 2 * time.Second
		n := 200
		if b.Mini != nil {
			n = 50 // miniredis runs scripts slowly: the first uses must take well under a lifetime
		}
		o := testOptions(prefix(t))
		o.Source.MinRefreshAhead = lifetime / 5
		ups := newUpstreams(lifetime)
		admin := b.Client(t)
		subs := func(want int64) func() bool {
			return func() bool { got, err := numSub(ctx, admin, o.Prefix+"events"); return err == nil && got == want }
		}
		a, bm := credentialMap(t, b, o, ups), credentialMap(t, b, o, ups)
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("wx%04d", i)
		}
		start := time.Now()
		forKeys(keys, func(k string) {
			if _, err := a.Token(ctx, k); err != nil {
				t.Error(err)
			}
		})
		waitFor(t, "one subscription for all the credentials of a Cache", subs(1))
		forKeys(keys, func(k string) {
			ta, errA := a.Token(ctx, k)
			tb, errB := bm.Token(ctx, k)
			if errA != nil || errB != nil || ta.Value != tb.Value {
				t.Errorf("%s: A %v, B %v, same token %v", k, errA, errB, ta.Value == tb.Value)
			}
		})
		switch got, took := ups.calls(), time.Since(start); {
		case took > lifetime/2:
			// Refreshes ahead may have fetched again.
			t.Logf("first uses took %v: fetches (%d for %d credentials) not checked", took, got, n)
		case got != n:
			t.Errorf("%d fetches for %d credentials used by 2 instances, want %d", got, n, n)
		}
		waitFor(t, "one subscription per instance", subs(2))
		spread(t, ctx, b, admin, o.Prefix, keys)
		stop := keepUsing(lifetime/4, func() {
			for _, k := range keys[:10] {
				if _, err := bm.Token(ctx, k); err != nil {
					t.Error(err)
				}
			}
		})
		defer stop()
		waitFor(t, "A to evict every credential", func() bool { return a.Len() == 0 })
		waitFor(t, "A's subscription to close", subs(1))
		waitFor(t, "B to evict the credentials it does not use", func() bool { return bm.Len() == 10 })
		pickUpWithoutFetch(t, ctx, admin, a, bm, "{"+o.Prefix+"tenant:"+keys[0]+"}:token", keys[0], ups)
	})
}

// pickUpWithoutFetch checks that a, which evicted key, serves the token b
// keeps fresh without a fetch. It waits until that token is well outside its
// refresh-ahead window, so that a cannot find it due for a refresh.
func pickUpWithoutFetch(t *testing.T, ctx context.Context, admin redis.UniversalClient, a, b *token.Map, redisKey, key string, ups *upstreams) {
	t.Helper()
	waitFor(t, "a fresh token", func() bool {
		ttl, err := admin.PTTL(ctx, redisKey).Result()
		return err == nil && ttl > 600*time.Millisecond
	})
	before := ups.calls()
	ta, err := a.Token(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	tb, _ := b.Token(ctx, key)
	if got := ups.calls() - before; got != 0 || ta.Value != tb.Value {
		t.Errorf("after eviction: %d fetches, same token as B: %v; want 0, true", got, ta.Value == tb.Value)
	}
}

// spread checks, on a Cluster, that the credentials' keys are on several
// slots and on every primary.
func spread(t *testing.T, ctx context.Context, b backend, admin redis.UniversalClient, p string, keys []string) {
	t.Helper()
	cc, ok := admin.(*redis.ClusterClient)
	if !ok {
		return
	}
	slots, masters := map[int64]bool{}, map[string]bool{}
	for _, k := range keys {
		key := "{" + p + "tenant:" + k + "}:token"
		slot, err := cc.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		node, err := cc.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		slots[slot], masters[node.Options().Addr] = true, true
	}
	t.Logf("%d credentials on %d slots and %d primaries", len(keys), len(slots), len(masters))
	if len(slots) < len(keys)/2 || len(masters) != len(b.Cluster) {
		t.Errorf("credentials on %d slots and %d primaries; want a wide spread", len(slots), len(masters))
	}
}

// forKeys calls fn for every key, from 16 goroutines.
func forKeys(keys []string, fn func(key string)) {
	ch := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for k := range ch {
				fn(k)
			}
		})
	}
	for _, k := range keys {
		ch <- k
	}
	close(ch)
	wg.Wait()
}

// keepUsing calls use every interval until stop is called.
func keepUsing(interval time.Duration, use func()) (stop func()) {
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				use()
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit); <-done }) }
}
