package rediscache_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// realRedisEnv names a real Redis server (host:port) for the tests that need
// one; .ci/run starts one and sets it.
const realRedisEnv = "TOKENCACHE_REDIS_ADDR"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.DiscardHandler)

func init() {
	if os.Getenv("TC_DEBUG") != "" {
		quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
}

// backend is a Redis server a test runs against.
type backend struct {
	name string
	addr string
	mr   *miniredis.Miniredis // nil for a real server
}

// backends returns miniredis, with TTLs that count down on the wall clock, and
// the real server named by TOKENCACHE_REDIS_ADDR if it is set.
func backends(t *testing.T) []backend {
	t.Helper()
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	bs := []backend{{name: "miniredis", addr: mr.Addr(), mr: mr}}
	if addr := os.Getenv(realRedisEnv); addr != "" {
		bs = append(bs, backend{name: "redis", addr: addr})
	} else {
		t.Logf("%s is not set: running against miniredis only", realRedisEnv)
	}
	return bs
}

// realRedis returns the real server, or skips the test with the reason.
func realRedis(t *testing.T) string {
	t.Helper()
	addr := os.Getenv(realRedisEnv)
	if addr == "" {
		t.Skipf("needs a real Redis: set %s (.ci/run does)", realRedisEnv)
	}
	return addr
}

// forEach runs fn as a subtest on every backend.
func forEach(t *testing.T, fn func(t *testing.T, b backend)) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// client returns a new client of b, closed when the test ends.
func (b backend) client(t testing.TB) *redis.Client {
	t.Helper()
	return newClient(t, b.addr)
}

func newClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// prefix returns a key prefix no other test uses, so that tests can share a
// real server.
func prefix(t testing.TB) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "tct:" + strings.NewReplacer("/", ".", " ", "_").Replace(t.Name()) + ":" + hex.EncodeToString(b) + ":"
}

// counter is a go-redis hook that counts commands.
type counter struct{ n atomic.Int64 }

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}
