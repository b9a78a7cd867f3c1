package token_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// BenchmarkMapToken measures Map.Token on a fresh token, beside
// BenchmarkTokenHot: one lookup more than Source.Token.
func BenchmarkMapToken(b *testing.B) {
	f := newFleet(time.Hour, opts())
	m := newMap(b, f.factory, token.MapOptions{})
	ctx := context.Background()
	for i := range 1000 {
		if _, err := m.Token(ctx, fmt.Sprint("tenant-", i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Token(ctx, "tenant-42"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkMapMemory: 100,000 credentials used once, 10,000 of them kept
// active (a call every 250 ms), 136-byte tokens, a tokentest.Store per key
// (made, like the tokens, before the first measurement: it stands for
// Redis), default Options but MinRefreshAhead 200 ms, sweeps every 100 ms.
// The active credentials' tokens live an hour, so that none of them is
// being refreshed when the heap is measured, and the others' a second, so
// that they are evicted within seconds. It reports the heap, after GC,
// that each active credential costs and that each evicted one leaves
// behind (target 0). It takes about 15 s: run it with -benchtime=1x.
func BenchmarkMapMemory(b *testing.B) {
	for b.Loop() {
		r := measureMap(b, 100_000, 10_000)
		b.ReportMetric(r.active, "heap-B/active")
		b.ReportMetric(r.evicted, "heap-B/evicted")
	}
}

// memResult is what measureMap reports, in bytes per credential.
type memResult struct{ active, evicted float64 }

func measureMap(b *testing.B, n, active int) memResult {
	const idleLifetime = time.Second
	m := newMap(b, memFactory(n, active, idleLifetime), token.MapOptions{SweepInterval: 100 * time.Millisecond})
	use := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := m.Token(context.Background(), memKey(i)); err != nil {
				b.Fatal(err)
			}
		}
	}
	reserveGoroutines(n)
	base := heap()
	use(0, active)
	withActive := heap()
	stop := keepUsing(250*time.Millisecond, func() { use(0, active) })
	defer stop()
	use(active, n)
	for deadline := time.Now().Add(10 * idleLifetime); m.Len() > active; {
		if time.Now().After(deadline) {
			b.Fatalf("%d credentials held, want %d", m.Len(), active)
		}
		time.Sleep(idleLifetime / 10)
	}
	time.Sleep(idleLifetime) // the runtime drops stopped timers lazily
	after := heap()
	stop()
	idle := float64(n - active)
	return memResult{
		active:  float64(withActive-base) / float64(active),
		evicted: float64(after-withActive) / idle,
	}
}

func memKey(i int) string { return fmt.Sprintf("wx%016d", i) }

// memFactory makes the Sources of n keys (memKey), each with a store and a
// 136-byte token of its own, all made before it returns. The first active
// keys' tokens live an hour, the others' idleLifetime.
func memFactory(n, active int, idleLifetime time.Duration) token.SourceFactory {
	type cred struct {
		st       *tokentest.Store
		value    string
		lifetime time.Duration
	}
	creds := make(map[string]cred, n)
	for i := range n {
		k := memKey(i)
		c := cred{st: tokentest.NewStore(), value: k + strings.Repeat("t", 136-len(k)), lifetime: idleLifetime}
		if i < active {
			c.lifetime = time.Hour
		}
		c.st.Watch(func(token.Event) {})() // its map of watchers exists
		creds[k] = c
	}
	return func(_ context.Context, key string) (*token.Source, error) {
		c := creds[key]
		f := token.FetcherFunc(func(context.Context) (token.Token, error) {
			return token.Token{Value: c.value, ExpiresAt: time.Now().Add(c.lifetime)}, nil
		})
		return token.NewSource(key, f, c.st, c.st, token.Options{Logger: quiet, MinRefreshAhead: 200 * time.Millisecond})
	}
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
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			close(quit)
			<-done
		}
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

// heap returns the live heap after a full collection.
func heap() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// BenchmarkMapSweep measures one sweep over 100,000 credentials in use
// (none evicted): the cost a sweep adds every SweepInterval.
func BenchmarkMapSweep(b *testing.B) {
	const n = 100_000
	m := newMap(b, memFactory(n, n, time.Hour), token.MapOptions{SweepInterval: time.Hour})
	for i := range n {
		if _, err := m.Token(context.Background(), memKey(i)); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if evicted := token.SweepOnce(m); evicted != 0 {
			b.Fatalf("evicted %d credentials in use", evicted)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/sweep")
}
