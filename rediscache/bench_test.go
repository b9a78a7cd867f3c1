package rediscache_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/tokencache/tokencache/token"
)

// benchBackend is the real server if TOKENCACHE_REDIS_ADDR is set, else
// miniredis.
func benchBackend(b *testing.B) backend {
	if addr := os.Getenv(realRedisEnv); addr != "" {
		return backend{Name: "redis", Addr: addr}
	}
	mr := miniredis.RunT(b)
	mr.ClockTTL(true)
	return backend{Name: "miniredis", Addr: mr.Addr(), Mini: mr}
}

// BenchmarkTokenHot measures Token on a Redis-backed Source in steady state
// and reports the Redis commands it sent per call (target 0).
func BenchmarkTokenHot(b *testing.B) {
	be := benchBackend(b)
	rdb := be.Client(b)
	var n counter
	rdb.AddHook(&n)
	src, err := newCache(b, rdb, testOptions(prefix(b))).Source("c", newUpstream(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	ctx := context.Background()
	if _, err := src.Token(ctx); err != nil {
		b.Fatal(err)
	}
	before := n.n.Load()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := src.Token(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(n.n.Load()-before)/float64(b.N), "redis-cmds/op")
}

// BenchmarkWaitersWake measures, per round, the time from the refresher's
// write to the last of 1,000 waiters (4 instances × 250) returning.
func BenchmarkWaitersWake(b *testing.B) {
	be := benchBackend(b)
	ctx := context.Background()
	var lats []time.Duration
	for b.Loop() {
		o := testOptions(prefix(b))
		o.Source.PollInterval = time.Hour // only the notification wakes them
		lat, err := waitersRound(ctx, b, be, o, 4, 250)
		if err != nil {
			b.Fatal(err)
		}
		lats = append(lats, lat)
	}
	slices.Sort(lats)
	q := func(p float64) float64 {
		return float64(lats[min(len(lats)-1, int(p*float64(len(lats))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
}

// BenchmarkManyCredentials holds 10,000 credentials, each with a token, in
// one process and one Redis, and reports the memory each costs in the
// process (heap) and in Redis (MEMORY USAGE of its keys).
func BenchmarkManyCredentials(b *testing.B) {
	be := benchBackend(b)
	ctx := context.Background()
	const n = 10000
	for b.Loop() {
		rdb := be.Client(b)
		p := prefix(b)
		o := testOptions(p)
		f := token.FetcherFunc(func(context.Context) (token.Token, error) {
			return token.Token{Value: strings.Repeat("t", 136), ExpiresAt: time.Now().Add(2 * time.Hour)}, nil
		})
		store := newCache(b, rdb, o)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		srcs := make([]*token.Source, 0, n)
		for i := range n {
			s, err := store.Source(fmt.Sprintf("cred-%05d", i), f)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Token(ctx); err != nil {
				b.Fatal(err)
			}
			srcs = append(srcs, s)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/credential")
		var redisBytes int64
		for _, k := range []string{"token", "fence"} {
			used, err := rdb.MemoryUsage(ctx, "{"+p+"cred-00042}:"+k).Result()
			if err != nil {
				b.Logf("MEMORY USAGE: %v", err)
				break
			}
			redisBytes += used
		}
		b.ReportMetric(float64(redisBytes), "redis-B/credential")
		for _, s := range srcs {
			_ = s.Close()
		}
	}
}
