// Package redistest gives tests the Redis servers to run against: an
// embedded miniredis always, and the real server named by
// TOKENCACHE_REDIS_ADDR when it is set (.ci/run starts one).
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

// Env names a real Redis server (host:port) for the tests that need one.
const Env = "TOKENCACHE_REDIS_ADDR"

// Backend is a Redis server a test runs against.
type Backend struct {
	Name string
	Addr string
	// Mini is the embedded server, nil for a real one.
	Mini *miniredis.Miniredis
}

// Backends returns miniredis, with TTLs that count down on the wall clock, and
// the real server named by Env if it is set.
func Backends(t testing.TB) []Backend {
	t.Helper()
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	bs := []Backend{{Name: "miniredis", Addr: mr.Addr(), Mini: mr}}
	if addr := os.Getenv(Env); addr != "" {
		bs = append(bs, Backend{Name: "redis", Addr: addr})
	} else {
		t.Logf("%s is not set: running against miniredis only", Env)
	}
	return bs
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
func (b Backend) Client(t testing.TB) *redis.Client { return NewClient(t, b.Addr) }

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
