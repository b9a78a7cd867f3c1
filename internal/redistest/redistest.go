// Package redistest gives tests the Redis servers to run against: an
// embedded miniredis always, and the real topologies that
// scripts/redis-topology.sh starts (and .ci/run sets) when their variables
// are set: a standalone server, a Cluster, a Sentinel-managed primary.
package redistest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Environment variables naming real servers.
const (
	// Env is a standalone server, host:port.
	Env = "TOKENCACHE_REDIS_ADDR"
	// ClusterEnv is a Redis Cluster, comma-separated host:port of its nodes.
	ClusterEnv = "TOKENCACHE_REDIS_CLUSTER"
	// SentinelEnv lists sentinels (host:port, comma-separated) watching
	// the primary named by SentinelMasterEnv.
	SentinelEnv       = "TOKENCACHE_REDIS_SENTINEL"
	SentinelMasterEnv = "TOKENCACHE_REDIS_SENTINEL_MASTER"
)

// Backend is a Redis server or topology a test runs against.
type Backend struct {
	Name string
	// Addr is the server of a standalone backend (miniredis or real).
	Addr string
	// Mini is the embedded server, nil for a real one.
	Mini *miniredis.Miniredis
	// Cluster holds the node addresses of a Redis Cluster.
	Cluster []string
	// Sentinels and Master name a Sentinel-managed primary.
	Sentinels []string
	Master    string
}

// Backends returns miniredis, with TTLs that count down on the wall clock, and
// every real topology whose variables are set.
func Backends(t testing.TB) []Backend {
	t.Helper()
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	bs := []Backend{{Name: "miniredis", Addr: mr.Addr(), Mini: mr}}
	if addr := os.Getenv(Env); addr != "" {
		bs = append(bs, Backend{Name: "redis", Addr: addr})
	}
	if nodes := os.Getenv(ClusterEnv); nodes != "" {
		bs = append(bs, Backend{Name: "cluster", Cluster: strings.Split(nodes, ",")})
	}
	if b, ok := SentinelBackend(); ok {
		bs = append(bs, b)
	}
	if len(bs) == 1 {
		t.Logf("%s, %s and %s are not set: running against miniredis only (scripts/redis-topology.sh starts real servers)", Env, ClusterEnv, SentinelEnv)
	}
	return bs
}

// SentinelBackend returns the Sentinel topology if its variables are set.
func SentinelBackend() (Backend, bool) {
	s, m := os.Getenv(SentinelEnv), os.Getenv(SentinelMasterEnv)
	if s == "" || m == "" {
		return Backend{}, false
	}
	return Backend{Name: "sentinel", Sentinels: strings.Split(s, ","), Master: m}, true
}

// IsCluster reports whether b is a Redis Cluster.
func (b Backend) IsCluster() bool { return len(b.Cluster) > 0 }

// Universal returns a new client of b; the caller closes it.
func (b Backend) Universal() redis.UniversalClient {
	switch {
	case len(b.Cluster) > 0:
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: b.Cluster})
	case len(b.Sentinels) > 0:
		return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: b.Master, SentinelAddrs: b.Sentinels})
	}
	return redis.NewClient(&redis.Options{Addr: b.Addr})
}

// ForEach runs fn as a subtest on every backend.
func ForEach(t *testing.T, fn func(t *testing.T, b Backend)) {
	for _, b := range Backends(t) {
		t.Run(b.Name, func(t *testing.T) { fn(t, b) })
	}
}

// Real returns the real server's address, or skips the test saying why.
func Real(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(Env)
	if addr == "" {
		t.Skipf("needs a real Redis: set %s (.ci/run does)", Env)
	}
	return addr
}

// Client returns a new client of b, closed when the test ends.
func (b Backend) Client(t testing.TB) redis.UniversalClient {
	c := b.Universal()
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// NewClient returns a new client of addr, closed when the test ends.
func NewClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a key prefix no other test uses, so that tests can share a
// real server.
func Prefix(t testing.TB) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "tct:" + strings.NewReplacer("/", ".", " ", "_").Replace(t.Name()) + ":" + hex.EncodeToString(b) + ":"
}
