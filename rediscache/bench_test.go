package rediscache_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/tokencache/tokencache/rediscache"
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
	src, err := rediscache.New(rdb, testOptions(prefix(b))).Source("c", newUpstream(time.Hour))
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
		lat, err := waitersRound(ctx, be, o, 4, 250)
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
