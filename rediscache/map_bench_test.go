package rediscache_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
)

// BenchmarkMapMemoryRedis is token's BenchmarkMapMemory on a Cache and the
// real server that TOKENCACHE_REDIS_ADDR names: 100,000 credentials used
// once and 10,000 of them kept active (a call every 250 ms), 136-byte
// tokens, sweeps every 100 ms. The active credentials' tokens live an
// hour, the others' a second. It reports the heap, after GC, that each
// active credential costs and that each evicted one leaves behind (target
// 0). It takes about a minute: run it with -benchtime=1x.
func BenchmarkMapMemoryRedis(b *testing.B) {
	be := benchBackend(b)
	if be.Mini != nil {
		b.Skip("needs a real Redis (set " + realRedisEnv + "): miniredis keeps its data on this heap, and runs 100,000 credentials' scripts too slowly")
	}
	for b.Loop() {
		perActive, perEvicted := measureRedisMap(b, be, 100_000, 10_000)
		b.ReportMetric(perActive, "heap-B/active")
		b.ReportMetric(perEvicted, "heap-B/evicted")
	}
}

func measureRedisMap(b *testing.B, be backend, n, active int) (perActive, perEvicted float64) {
	const idleLifetime = time.Second
	rdb := be.Client(b)
	o := testOptions(prefix(b))
	o.Source.MinRefreshAhead = 200 * time.Millisecond
	m, err := token.NewMap(redisMemFactory(newCache(b, rdb, o), n, active, idleLifetime), token.MapOptions{SweepInterval: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("wx%016d", i)
	}
	use := func(keys []string) {
		forKeys(keys, func(k string) {
			if _, err := m.Token(context.Background(), k); err != nil {
				b.Error(err)
			}
		})
	}
	forKeys(keys[:1000], func(string) { _ = rdb.Ping(context.Background()).Err() }) // the pool's connections exist
	reserveGoroutines(n)
	base := heapNow()
	use(keys[:active])
	withActive := heapNow()
	stop := keepUsing(250*time.Millisecond, func() { use(keys[:active]) })
	defer stop()
	use(keys[active:])
	for deadline := time.Now().Add(30 * idleLifetime); m.Len() > active; {
		if time.Now().After(deadline) {
			b.Fatalf("%d credentials held, want %d", m.Len(), active)
		}
		time.Sleep(idleLifetime / 10)
	}
	time.Sleep(idleLifetime) // the runtime drops stopped timers lazily
	after := heapNow()
	stop()
	return float64(withActive-base) / float64(active), float64(after-withActive) / float64(n-active)
}

// redisMemFactory makes the Sources of the keys wx%016d on cache, each with
// a 136-byte token of its own, made before it returns. The first active
// keys' tokens live an hour, the others' idleLifetime.
func redisMemFactory(cache interface {
	Source(string, token.Fetcher) (*token.Source, error)
}, n, active int, idleLifetime time.Duration) token.SourceFactory {
	type cred struct {
		value    string
		lifetime time.Duration
	}
	creds := make(map[string]cred, n)
	for i := range n {
		k := fmt.Sprintf("wx%016d", i)
		c := cred{value: k + strings.Repeat("t", 136-len(k)), lifetime: idleLifetime}
		if i < active {
			c.lifetime = time.Hour
		}
		creds[k] = c
	}
	return func(_ context.Context, key string) (*token.Source, error) {
		c := creds[key]
		return cache.Source(key, token.FetcherFunc(func(context.Context) (token.Token, error) {
			return token.Token{Value: c.value, ExpiresAt: time.Now().Add(c.lifetime)}, nil
		}))
	}
}

// reserveGoroutines starts and ends n goroutines: the runtime keeps the
// descriptor of an exited goroutine (on the heap) for reuse, so that the
// timers of many credentials firing at once would otherwise leave heap
// behind that no credential holds.
func reserveGoroutines(n int) {
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range n {
		wg.Go(func() { <-release })
	}
	close(release)
	wg.Wait()
}

// heapNow returns the live heap after a full collection.
func heapNow() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
