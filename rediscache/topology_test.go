package rediscache_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestClusterSpreadsCredentials runs 48 credentials, spread over many slots
// and all three primaries, on 3 instances with their own ClusterClients: one
// fetch per credential, one more per invalidation, no CROSSSLOT error, and
// invalidations announced on one node reach instances subscribed on others.
func TestClusterSpreadsCredentials(t *testing.T) {
	nodes := os.Getenv(redistest.ClusterEnv)
	if nodes == "" {
		t.Skipf("needs a Redis Cluster: set %s (scripts/redis-topology.sh cluster up; .ci/run does)", redistest.ClusterEnv)
	}
	b := redistest.Backend{Name: "cluster", Cluster: strings.Split(nodes, ",")}
	ctx := context.Background()
	p := prefix(t)
	o := testOptions(p)
	o.LockTTL = 5 * time.Second

	const creds = 48
	var mu sync.Mutex
	fetches := map[string]int{}
	fetcher := func(name string) token.Fetcher {
		up := newUpstream(time.Hour)
		return token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
			mu.Lock()
			fetches[name]++
			mu.Unlock()
			return up.Fetch(ctx)
		})
	}
	fs := map[string]token.Fetcher{}
	for i := range creds {
		name := fmt.Sprintf("partner-%d", i)
		fs[name] = fetcher(name)
	}
	var insts [3]map[string]*token.Source
	for i := range insts {
		store := newCache(t, b.Client(t), o)
		insts[i] = map[string]*token.Source{}
		for name, f := range fs {
			s, err := store.Source(name, f)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			insts[i][name] = s
		}
	}
	// Every instance asks for every credential at once.
	var wg sync.WaitGroup
	for _, inst := range insts {
		for _, s := range inst {
			for range 4 {
				wg.Go(func() {
					if _, err := s.Token(ctx); err != nil {
						t.Error(err)
					}
				})
			}
		}
	}
	wg.Wait()
	rdb := b.Client(t).(*redis.ClusterClient)
	slots, masters := map[int64]bool{}, map[string]bool{}
	for name := range fs {
		if fetches[name] != 1 {
			t.Errorf("%s fetched %d times, want 1", name, fetches[name])
		}
		key := "{" + p + name + "}:token"
		slot, err := rdb.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[slot] = true
		node, err := rdb.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		masters[node.Options().Addr] = true
	}
	t.Logf("%d credentials on %d slots and %d primaries", creds, len(slots), len(masters))
	if len(slots) < creds/2 || len(masters) != len(b.Cluster) {
		t.Errorf("credentials on %d slots and %d primaries; want a wide spread", len(slots), len(masters))
	}
	// Instance i invalidates; instance i+1 must serve the replacement.
	for name := range fs {
		i := len(name) % 3
		old, _ := insts[i][name].Token(ctx)
		if err := insts[i][name].Invalidate(ctx, old.Value); err != nil {
			t.Fatal(err)
		}
		// The notification crosses nodes in the background.
		if !scenario.Retry(5*time.Second, time.Millisecond, func() bool {
			tok, err := insts[(i+1)%3][name].Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return tok.Value != old.Value
		}) {
			t.Fatalf("%s: the other instance still serves the invalidated token", name)
		}
	}
	for name := range fs {
		if fetches[name] != 2 {
			t.Errorf("%s fetched %d times after one invalidation, want 2", name, fetches[name])
		}
	}
}

// TestSentinelFailover kills the primary in the middle of a run. The sources
// keep serving their near-cached tokens, refreshes resume against the new
// primary, and the test reports what the failover cost. It starts a Sentinel
// topology of its own, so that the failover disturbs no other test.
func TestSentinelFailover(t *testing.T) {
	if _, ok := redistest.SentinelBackend(); !ok {
		t.Skipf("runs with the real topologies: set %s and %s (.ci/run does)", redistest.SentinelEnv, redistest.SentinelMasterEnv)
	}
	b := privateSentinel(t)
	ctx := context.Background()
	sentinel := redis.NewSentinelClient(&redis.Options{Addr: b.Sentinels[0]})
	defer sentinel.Close()
	primary := func() string {
		a, err := sentinel.GetMasterAddrByName(ctx, b.Master).Result()
		if err != nil {
			t.Fatal(err)
		}
		return net.JoinHostPort(a[0], a[1])
	}
	old := primary()

	const lifetime = 8 * time.Second
	up := newUpstream(lifetime)
	o := testOptions(prefix(t))
	o.LockTTL = 2 * time.Second
	var srcs []*token.Source
	for range 4 {
		s := source(t, b.Client(t), o, up)
		srcs = append(srcs, s)
	}
	const d = 18 * time.Second
	done := make(chan tokentest.Result)
	start := time.Now()
	go func() {
		done <- tokentest.Load(ctx, srcs, tokentest.LoadConfig{Goroutines: 16, Duration: d, Think: 5 * time.Millisecond, Upstream: up})
	}()
	time.Sleep(2 * time.Second) // on purpose: let the run settle before the fault
	killed := time.Now()
	kill := redis.NewClient(&redis.Options{Addr: old})
	_ = kill.ShutdownNoSave(ctx).Err() // the connection drops: no reply
	kill.Close()
	var newPrimary string
	if !scenario.Retry(30*time.Second, 50*time.Millisecond, func() bool { // polling Sentinel
		newPrimary = primary()
		return newPrimary != old
	}) {
		t.Fatal("no failover within 30s")
	}
	failover := time.Since(killed)
	res := <-done
	var resumed time.Duration = -1
	for _, at := range up.IssueTimes() {
		if at.After(killed.Add(failover)) {
			resumed = at.Sub(killed)
			break
		}
	}
	ideal := 1 + int(res.Duration/(lifetime*8/10))
	t.Logf("failover %v -> %v took %v; %s; upstream issued %d (ideal %d); first refresh after the failover %v after the kill",
		old, newPrimary, failover.Round(time.Millisecond), res, up.Issued(), ideal, resumed.Round(time.Millisecond))
	if res.Errors > 0 {
		t.Errorf("%d callers got errors (first: %v); the near cache should carry them through", res.Errors, res.FirstErr)
	}
	if resumed < 0 && time.Since(start) > 2*lifetime {
		t.Errorf("no refresh after the failover")
	}
	if up.Issued() > ideal+2 {
		t.Errorf("upstream issued %d tokens, want at most %d", up.Issued(), ideal+2)
	}
	if res.MaxStale > time.Second {
		t.Errorf("a token was handed out %v after it died", res.MaxStale)
	}
}

// privateSentinel starts a primary, a replica and three sentinels with
// scripts/redis-topology.sh in a directory of the test's, and stops them when
// the test ends.
func privateSentinel(t *testing.T) redistest.Backend {
	t.Helper()
	env := append(os.Environ(), "TOKENCACHE_TOPOLOGY_DIR="+t.TempDir(), "TOKENCACHE_SENTINEL_DOWN_AFTER_MS=1000")
	script := "../scripts/redis-topology.sh"
	up := exec.Command("bash", script, "sentinel", "up")
	up.Env = env
	out, err := up.Output()
	t.Cleanup(func() {
		down := exec.Command("bash", script, "sentinel", "down")
		down.Env = env
		if out, err := down.CombinedOutput(); err != nil {
			t.Logf("sentinel down: %v: %s", err, out)
		}
	})
	if err != nil {
		t.Fatalf("sentinel up: %v: %s", err, out)
	}
	b := redistest.Backend{Name: "sentinel"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case redistest.SentinelEnv:
			b.Sentinels = strings.Split(v, ",")
		case redistest.SentinelMasterEnv:
			b.Master = v
		}
	}
	if len(b.Sentinels) == 0 || b.Master == "" {
		t.Fatalf("sentinel up printed %q", out)
	}
	return b
}
