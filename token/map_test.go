package token_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"weak"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// fleet is what many credentials share across instances: a store and an
// upstream per key, as Redis and the upstream are for a cluster. Every
// Source made for a key, by any Map, uses that key's store.
type fleet struct {
	opts  token.Options
	life  time.Duration // of the upstreams' tokens
	mu    sync.Mutex    // guards creds and made
	creds map[string]*cred
	made  []*token.Source // every Source made, in order
}

type cred struct {
	st *tokentest.Store
	up *tokentest.Upstream
}

func newFleet(lifetime time.Duration, o token.Options) *fleet {
	return &fleet{opts: o, life: lifetime, creds: make(map[string]*cred)}
}

func (f *fleet) cred(key string) *cred {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.creds[key]
	if c == nil {
		c = &cred{st: tokentest.NewStore(), up: tokentest.New(f.life)}
		f.creds[key] = c
	}
	return c
}

func (f *fleet) factory(_ context.Context, key string) (*token.Source, error) {
	c := f.cred(key)
	s, err := token.NewSource(key, c.up, c.st, c.st, f.opts)
	if err == nil {
		f.mu.Lock()
		f.made = append(f.made, s)
		f.mu.Unlock()
	}
	return s, err
}

// sources returns how many Sources were made.
func (f *fleet) sources() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.made)
}

// fetches returns the upstream calls of every credential.
func (f *fleet) fetches() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.creds {
		n += c.up.Calls()
	}
	return n
}

func newMap(t testing.TB, f token.SourceFactory, o token.MapOptions) *token.Map {
	t.Helper()
	m, err := token.NewMap(f, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// TestMapEvictsIdleCredential: a credential used once is kept while a use
// is recorded within two lifetimes, then evicted within two sweeps; its
// Source is closed and the sweeper stops with the last Source.
func TestMapEvictsIdleCredential(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime, sweep = 10 * time.Second, time.Second
		f := newFleet(lifetime, token.Options{Logger: quiet})
		m := newMap(t, f.factory, token.MapOptions{SweepInterval: sweep})
		ctx := context.Background()
		if token.Sweeping(m) {
			t.Error("a sweeper runs before the first key")
		}
		if _, err := m.Token(ctx, "wx1"); err != nil {
			t.Fatal(err)
		}
		if !token.Sweeping(m) || m.Len() != 1 {
			t.Fatalf("after first use: sweeping %v, Len %d", token.Sweeping(m), m.Len())
		}
		time.Sleep(2*lifetime - sweep)
		synctest.Wait()
		if m.Len() != 1 {
			t.Fatalf("evicted %v after its last use, before two lifetimes", 2*lifetime-sweep)
		}
		time.Sleep(3 * sweep)
		synctest.Wait()
		if m.Len() != 0 || token.Sweeping(m) {
			t.Fatalf("two lifetimes and two sweeps after its last use: Len %d, sweeping %v", m.Len(), token.Sweeping(m))
		}
		if _, err := f.made[0].Token(ctx); !errors.Is(err, token.ErrClosed) {
			t.Errorf("the evicted Source answers %v, want ErrClosed (closed)", err)
		}
		if n := f.fetches(); n != 2 {
			t.Errorf("%d fetches: want 2 (first use, one refresh ahead)", n)
		}
		if _, err := m.Token(ctx, "wx1"); err != nil || !token.Sweeping(m) || m.Len() != 1 {
			t.Errorf("use after eviction: %v, sweeping %v, Len %d", err, token.Sweeping(m), m.Len())
		}
	})
}

// TestMapEvictedSourcesAreCollected: once evicted, nothing holds a
// credential's Source any more (no goroutine, timer, watcher or map entry):
// the garbage collector frees every one.
func TestMapEvictedSourcesAreCollected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime, n = 10 * time.Second, 100
		f := newFleet(lifetime, token.Options{Logger: quiet})
		var made []weak.Pointer[token.Source]
		m := newMap(t, func(ctx context.Context, key string) (*token.Source, error) {
			c := f.cred(key)
			s, err := token.NewSource(key, c.up, c.st, c.st, token.Options{Logger: quiet})
			made = append(made, weak.Make(s)) // one caller at a time here
			return s, err
		}, token.MapOptions{SweepInterval: time.Second})
		for i := range n {
			if _, err := m.Token(context.Background(), fmt.Sprint("k", i)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(2*lifetime + 3*time.Second)
		synctest.Wait()
		runtime.GC()
		alive := 0
		for _, p := range made {
			if p.Value() != nil {
				alive++
			}
		}
		if m.Len() != 0 || alive != 0 {
			t.Errorf("after eviction: Len %d, %d of %d Sources not collected", m.Len(), alive, n)
		}
	})
}

// TestMapEvictedTokenPickedUpWithoutFetch: instance A uses a credential
// once, instance B keeps using it. A evicts it; A's next use reads the
// token B kept fresh from the store: 0 upstream calls.
func TestMapEvictedTokenPickedUpWithoutFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime, sweep = 10 * time.Second, time.Second
		f := newFleet(lifetime, token.Options{Logger: quiet})
		a := newMap(t, f.factory, token.MapOptions{SweepInterval: sweep})
		b := newMap(t, f.factory, token.MapOptions{SweepInterval: sweep})
		ctx := context.Background()
		if _, err := a.Token(ctx, "tenant-1"); err != nil {
			t.Fatal(err)
		}
		for range 12 { // 3 lifetimes
			if _, err := b.Token(ctx, "tenant-1"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(lifetime / 4)
		}
		synctest.Wait()
		if a.Len() != 0 || b.Len() != 1 {
			t.Fatalf("A holds %d, B holds %d; want 0 and 1", a.Len(), b.Len())
		}
		before := f.fetches()
		tok, err := a.Token(ctx, "tenant-1")
		if err != nil {
			t.Fatal(err)
		}
		want, _ := b.Token(ctx, "tenant-1")
		if n := f.fetches() - before; n != 0 || tok.Value != want.Value {
			t.Errorf("after eviction: %d upstream calls, same token as B: %v; want 0, true", n, tok.Value == want.Value)
		}
	})
}

// TestMapKeepsCredentialsInUse: a quiet service, one call every 1.2
// lifetimes for 20 lifetimes through a Map that sweeps every second: the
// Map never evicts the credential (one Source) and no call after the first
// waits for a fetch, as with a Source of its own.
func TestMapKeepsCredentialsInUse(t *testing.T) {
	for _, lifetime := range []time.Duration{2 * time.Second, 10 * time.Second, time.Hour} {
		t.Run(lifetime.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { quietThroughMap(t, lifetime) })
		})
	}
}

func quietThroughMap(t *testing.T, lifetime time.Duration) {
	f := newFleet(lifetime, token.Options{Logger: quiet})
	f.cred("k").up.Latency = 100 * time.Millisecond
	m := newMap(t, f.factory, token.MapOptions{SweepInterval: time.Second})
	ctx := context.Background()
	for i := range 17 {
		start := time.Now()
		if _, err := m.Token(ctx, "k"); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if d := time.Since(start); d > 0 && i > 0 {
			t.Errorf("call %d waited %v", i, d)
		}
		time.Sleep(lifetime * 12 / 10)
	}
	if n := f.sources(); n != 1 {
		t.Errorf("%d Sources made for a credential in use, want 1", n)
	}
}

// TestMapKeepsCredentialsUsedBesideARefresher: instance A uses a
// credential every 0.9 lifetimes while instance B, which uses it more
// often, refreshes it, so that B's new tokens replace A's before A's
// refresh-ahead deadline. A's uses still count: A never evicts it.
func TestMapKeepsCredentialsUsedBesideARefresher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime = 10 * time.Second
		f := newFleet(lifetime, token.Options{Logger: quiet})
		var madeByA atomic.Int32
		a := newMap(t, func(ctx context.Context, key string) (*token.Source, error) {
			madeByA.Add(1)
			return f.factory(ctx, key)
		}, token.MapOptions{SweepInterval: time.Second})
		b := newMap(t, f.factory, token.MapOptions{SweepInterval: time.Second})
		ctx := context.Background()
		if _, err := b.Token(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(lifetime / 4):
					_, _ = b.Token(ctx, "k")
				}
			}
		}()
		for range 12 {
			if _, err := a.Token(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(lifetime * 9 / 10)
		}
		close(stop)
		if n := madeByA.Load(); n != 1 {
			t.Errorf("A made %d Sources for a credential it used every 0.9 lifetimes, want 1", n)
		}
	})
}

// TestMapCreatesOnceUnderContention: 1,000 goroutines ask for the same new
// key at once: one Source, one fetch, one token.
func TestMapCreatesOnceUnderContention(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet(time.Hour, token.Options{Logger: quiet})
		f.cred("new").up.Latency = 100 * time.Millisecond
		factory := func(ctx context.Context, key string) (*token.Source, error) {
			time.Sleep(10 * time.Millisecond) // every caller arrives meanwhile
			return f.factory(ctx, key)
		}
		m := newMap(t, factory, token.MapOptions{})
		const n = 1000
		var wg sync.WaitGroup
		tokens := make([]string, n)
		for i := range n {
			wg.Go(func() {
				tok, err := m.Token(context.Background(), "new")
				if err != nil {
					t.Error(err)
				}
				tokens[i] = tok.Value
			})
		}
		wg.Wait()
		for _, v := range tokens {
			if v != tokens[0] {
				t.Fatal("callers got different tokens")
			}
		}
		t.Logf("%d goroutines, one new key: %d Sources made, %d fetches", n, f.sources(), f.fetches())
		if f.sources() != 1 || f.fetches() != 1 {
			t.Errorf("%d Sources, %d fetches; want 1 and 1", f.sources(), f.fetches())
		}
	})
}

// TestMapFailedCreationIsNotKept: a factory error reaches every caller that
// waited for that run, and the next call runs the factory again. Callers
// that waited for a run whose caller gave up run it themselves.
func TestMapFailedCreationIsNotKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet(time.Hour, token.Options{Logger: quiet})
		var runs atomic.Int32
		boom := errors.New("no such tenant yet")
		factory := func(ctx context.Context, key string) (*token.Source, error) {
			switch runs.Add(1) {
			case 1:
				time.Sleep(time.Millisecond)
				return nil, boom
			case 2:
				<-ctx.Done() // its caller gives up
				return nil, ctx.Err()
			}
			time.Sleep(time.Millisecond)
			return f.factory(ctx, key)
		}
		m := newMap(t, factory, token.MapOptions{})
		ctx := context.Background()
		errs := make(chan error, 10)
		for range 10 {
			go func() { _, err := m.Token(ctx, "k"); errs <- err }()
		}
		for range 10 {
			if err := <-errs; !errors.Is(err, boom) {
				t.Errorf("waiter got %v, want the factory's error", err)
			}
		}
		short, cancel := context.WithCancel(ctx)
		go func() { _, err := m.Token(short, "k"); errs <- err }()
		synctest.Wait() // the second run is blocked in the factory
		go func() { _, err := m.Token(ctx, "k"); errs <- err }()
		synctest.Wait()
		cancel()
		for range 2 {
			if err := <-errs; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("after a run given up: %v", err)
			}
		}
		if n := runs.Load(); n != 3 || m.Len() != 1 {
			t.Errorf("factory ran %d times, Len %d; want 3, 1", n, m.Len())
		}
	})
}

// TestMapEvictionWhileInUse: 64 goroutines call Token on 64 keys at random
// intervals while the Map sweeps every millisecond and tokens live 30 ms,
// so keys are evicted and made again all the time: no call gets an error.
func TestMapEvictionWhileInUse(t *testing.T) {
	const lifetime, keys = 30 * time.Millisecond, 64
	o := opts()
	o.MinRefreshAhead = time.Millisecond
	f := newFleet(lifetime, o)
	m := newMap(t, f.factory, token.MapOptions{SweepInterval: time.Millisecond})
	ctx := context.Background()
	var calls, failures atomic.Int64
	deadline := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				calls.Add(1)
				if _, err := m.Token(ctx, fmt.Sprint("k", rand.N(keys))); err != nil {
					if failures.Add(1) == 1 {
						t.Errorf("Token: %v", err)
					}
				}
				time.Sleep(rand.N(4 * lifetime)) // some keys go idle
			}
		})
	}
	wg.Wait()
	made := f.sources()
	t.Logf("%d calls on %d keys, %d Sources made (%d evicted), %d errors", calls.Load(), keys, made, made-m.Len(), failures.Load())
	if made < 4*keys {
		t.Errorf("only %d Sources made for %d keys: eviction did not race with use", made, keys)
	}
}

// TestMapTokenAfterEvictionUnderIt: a caller whose Source is evicted
// between its lookup and its call is served by the key's next Source.
func TestMapTokenAfterEvictionUnderIt(t *testing.T) {
	f := newFleet(time.Hour, opts())
	m := newMap(t, f.factory, token.MapOptions{})
	tok, closed, err := token.TokenEvictedUnder(context.Background(), m, "k")
	if err != nil || tok.Value == "" || !closed {
		t.Fatalf("Token = %v, %v (Source closed under it: %v)", tok, err, closed)
	}
	if f.sources() != 2 || f.fetches() != 1 {
		t.Errorf("%d Sources, %d fetches; want 2, 1", f.sources(), f.fetches())
	}
}

// TestMapClose: Close closes every Source, ends calls waiting for a fetch
// with ErrClosed, and a Source made while it ran.
func TestMapClose(t *testing.T) {
	f := newFleet(time.Hour, opts())
	entered, release := f.cred("slow").up.Hold()
	defer release()
	arrived, gate := make(chan struct{}), make(chan struct{})
	factory := func(ctx context.Context, key string) (*token.Source, error) {
		if key == "late" {
			close(arrived)
			<-gate
		}
		return f.factory(ctx, key)
	}
	m, err := token.NewMap(factory, token.MapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 5 {
		if _, err := m.Token(ctx, fmt.Sprint("k", i)); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, 2)
	go func() { _, err := m.Token(ctx, "slow"); errs <- err }()
	<-entered
	go func() { _, err := m.Token(ctx, "late"); errs <- err }()
	<-arrived
	time.AfterFunc(10*time.Millisecond, func() { close(gate) })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; !errors.Is(err, token.ErrClosed) {
			t.Errorf("a call during Close got %v, want ErrClosed", err)
		}
	}
	if _, err := m.Token(ctx, "k1"); !errors.Is(err, token.ErrClosed) {
		t.Errorf("Token after Close: %v", err)
	}
	if err := m.ResetBackoff(ctx, "k1"); !errors.Is(err, token.ErrClosed) {
		t.Errorf("ResetBackoff after Close: %v", err)
	}
	for i, s := range f.made {
		if _, err := s.Token(ctx); !errors.Is(err, token.ErrClosed) {
			t.Errorf("Source %d after the Map's Close: %v", i, err)
		}
	}
	if m.Len() != 0 || token.Sweeping(m) {
		t.Errorf("after Close: Len %d, sweeping %v", m.Len(), token.Sweeping(m))
	}
}

// TestMapInvalidateAndResetBackoff: Invalidate and ResetBackoff reach the
// key's Source; Invalidate of a key the Map does not hold makes no Source.
func TestMapInvalidateAndResetBackoff(t *testing.T) {
	f := newFleet(time.Hour, opts())
	m := newMap(t, f.factory, token.MapOptions{})
	ctx := context.Background()
	tok, err := m.Token(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Invalidate(ctx, "k", tok.Value); err != nil {
		t.Fatal(err)
	}
	if next, err := m.Token(ctx, "k"); err != nil || next.Value == tok.Value {
		t.Errorf("after Invalidate: %v, %v; want a new token", next, err)
	}
	if err := m.Invalidate(ctx, "absent", "whatever-token-value"); err != nil || m.Len() != 1 {
		t.Errorf("Invalidate of an absent key: %v, Len %d; want nil, 1", err, m.Len())
	}

	c := f.cred("failing")
	c.up.FailNext(errors.New("wrong secret"))
	if _, err := m.Token(ctx, "failing"); err == nil {
		t.Fatal("the failing fetch succeeded")
	}
	if _, err := m.Token(ctx, "failing"); !errors.Is(err, token.ErrUpstreamBackoff) {
		t.Fatalf("during the backoff: %v", err)
	}
	if err := m.ResetBackoff(ctx, "failing"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Token(ctx, "failing"); err != nil {
		t.Errorf("after ResetBackoff: %v", err)
	}
}

// TestMapMisuse: a nil factory, and a factory that returns a nil Source.
func TestMapMisuse(t *testing.T) {
	if _, err := token.NewMap(nil, token.MapOptions{}); !errors.Is(err, token.ErrInvalidConfig) {
		t.Errorf("NewMap(nil): %v", err)
	}
	m := newMap(t, func(context.Context, string) (*token.Source, error) { return nil, nil }, token.MapOptions{})
	if _, err := m.Token(context.Background(), "k"); !errors.Is(err, token.ErrInvalidConfig) {
		t.Errorf("nil Source: %v", err)
	}
	if m.Len() != 0 {
		t.Errorf("Len %d after a failed creation", m.Len())
	}
}

// TestMapHotPathAllocatesNothing: Map.Token on a fresh token allocates
// nothing and does no I/O.
func TestMapHotPathAllocatesNothing(t *testing.T) {
	f := newFleet(time.Hour, opts())
	m := newMap(t, f.factory, token.MapOptions{})
	ctx := context.Background()
	if _, err := m.Token(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	loads := f.cred("k").st.Loads()
	if n := testing.AllocsPerRun(1000, func() { _, _ = m.Token(ctx, "k") }); n != 0 {
		t.Errorf("Map.Token allocates %v times per call", n)
	}
	if n := f.cred("k").st.Loads(); n != loads {
		t.Errorf("the hot path read the store %d times", n-loads)
	}
}
