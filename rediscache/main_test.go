package rediscache_test

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tokencache/tokencache/internal/redistest"
)

// realRedisEnv names a real Redis server (host:port) for the tests that need
// one; .ci/run starts one and sets it.
const realRedisEnv = redistest.Env

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m,
		// go-redis's routed Sentinel client (NewFailoverClusterClient)
		// never closes its sentinel subscription, even after Close; this
		// package no longer uses go-redis's pub/sub channel goroutines.
		goleak.IgnoreTopFunction("github.com/redis/go-redis/v9.(*sentinelFailover).listen"),
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9.(*channel).initHealthCheck.func1"),
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9.(*channel).initMsgChan.func1"),
	)
}

var quiet = slog.New(slog.DiscardHandler)

func init() {
	if os.Getenv("TC_DEBUG") != "" {
		quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
}

type backend = redistest.Backend

var (
	forEach   = redistest.ForEach
	realRedis = redistest.Real
	newClient = redistest.NewClient
	prefix    = redistest.Prefix
)

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
