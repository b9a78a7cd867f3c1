package token

// The Map: many credentials on demand, one Source per key, made on first
// use and evicted when idle.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// A SourceFactory makes the Source of one key of a Map. With rediscache:
//
//	func(ctx context.Context, key string) (*token.Source, error) {
//		return cache.Source("wechat:authorizer:"+key, fetcherFor(key))
//	}
//
// A Map runs it once per key at a time, on the key's first use and on its
// first use after an eviction, so it should do no I/O (rediscache's does
// none). The Map owns the Source returned: it closes it when it evicts the
// key and on Close. Do not use or close it elsewhere.
type SourceFactory func(ctx context.Context, key string) (*Source, error)

// MapOptions configure a Map. The zero value is ready to use; every zero
// field takes the default its comment gives.
type MapOptions struct {
	// SweepInterval is how often the Map looks for idle credentials to
	// evict. A sweep visits every key without holding a lock: its cost is
	// O(keys), about 35 ms for 100,000 keys (BenchmarkMapSweep, on a busy
	// core). A credential is evicted within two intervals after it became
	// idle, and a Source lives at least one interval. Default 1 minute.
	SweepInterval time.Duration
}

// A Map hands out the tokens of many credentials, each under a string key:
// one per authorized account of a third-party platform, one per tenant of a
// SaaS. A key's Source is made by a SourceFactory on its first use and
// evicted when idle; with rediscache, every Source of a Map shares the
// Cache's single subscription.
//
// A credential is idle when it has not been used for more than one token
// lifetime plus its refresh-ahead window: the rule by which a Source stops
// refreshing its token ahead of expiry (a credential used within its last
// lifetime is refreshed ahead; one idle for longer is not). A sweep every
// MapOptions.SweepInterval evicts the credentials that it and the sweep before
// it found idle. Token records uses at
// no cost, to within a fraction of a lifetime, so a sweep evicts a
// credential only once no use is recorded within two lifetimes: never one
// in use, and one used once about two lifetimes after that use. Eviction
// closes the Source, so that it holds no goroutine, timer or token in
// memory, and the Map forgets the key. The shared token stays in the
// store: the key's next use reads it, and fetches only if it has expired
// (no other instance kept it fresh).
//
// Callers never hold a Source: Token, Invalidate and ResetBackoff take the
// key. That is what makes eviction safe: a call that raced with the eviction
// of its key is served by the key's next Source, and never gets ErrClosed
// before the Map itself is closed.
//
// Concurrent first uses of a key make one Source (the factory runs once)
// and cause one fetch. A factory's error is returned to the callers that
// waited for that run and is not remembered: the next call runs the factory
// again.
//
// Use a Map from any number of goroutines; call Close when done. Make one
// with NewMap: the zero value is not usable.
type Map struct {
	factory  SourceFactory
	interval time.Duration // MapOptions.SweepInterval; write-once
	// slots maps a key to its *slot, or to the *creation making it. A
	// sync.Map, because loads, on the hot path, take no lock.
	slots  sync.Map
	n      atomic.Int64 // how many *slot values slots holds
	closed atomic.Bool
	once   sync.Once // runs Close
	sweep  sweeper
}

// slot is a key's Source.
type slot struct {
	src *Source
	// born is when src was made (unix ns): a sweep evicts only Sources made
	// before the previous sweep, so that each lives at least one interval.
	born int64
	// evicted is set before src stops refreshing: a call on src that then
	// gets ErrClosed asks the Map again.
	evicted atomic.Bool
	// idleSeen: the previous sweep found src idle. A Source is evicted only
	// when two sweeps in a row find it idle, so that a use recorded late
	// (a call that raced an event replacing its entry) is not missed.
	idleSeen atomic.Bool
}

// creation is a key's Source being made: callers that find it wait for
// done, then read sl or err.
type creation struct {
	done chan struct{}
	sl   *slot // the slot made; written before done is closed
	err  error // why none was made; written before done is closed
	// ctxEnded: the factory failed after the context of the caller that
	// ran it ended, so the callers that waited for it try again.
	ctxEnded bool
}

// sweeper runs the sweeps in a goroutine that runs only while the Map holds
// a Source.
type sweeper struct {
	mu      sync.Mutex // guards running and done
	running bool
	done    chan struct{} // closed when the goroutine started last returns
	stop    chan struct{} // closed by Close; write-once
}

// NewMap returns a Map that makes the Source of a key with f. It does no
// I/O and starts no goroutine. It returns an error wrapping
// ErrInvalidConfig if f is nil.
func NewMap(f SourceFactory, opts MapOptions) (*Map, error) {
	if f == nil {
		return nil, fmt.Errorf("%w: nil SourceFactory", ErrInvalidConfig)
	}
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = time.Minute
	}
	return &Map{factory: f, interval: opts.SweepInterval, sweep: sweeper{stop: make(chan struct{})}}, nil
}

// Token returns a valid token of key's credential, as Source.Token does,
// making the key's Source on its first use. While the token is fresh it
// does no I/O, takes no lock and allocates nothing. It returns the
// factory's error if the Source could not be made, and ErrClosed after
// Close.
func (m *Map) Token(ctx context.Context, key string) (Token, error) {
	for {
		sl, err := m.get(ctx, key)
		if err != nil {
			return Token{}, err
		}
		tok, err := sl.src.Token(ctx)
		if err == nil || !m.evictedUnder(key, sl, err) {
			return tok, err
		}
	}
}

// Invalidate reports that the upstream rejected bad, a token of key's
// credential, as Source.Invalidate does. With no Source for key it does
// nothing: the key was evicted, at least one token lifetime after its last
// use, so every token the Map handed out for it has expired, bad included.
// After Close it does nothing.
func (m *Map) Invalidate(ctx context.Context, key, bad string) error {
	if v, ok := m.slots.Load(key); ok {
		if sl, ok := v.(*slot); ok {
			return sl.src.Invalidate(ctx, bad)
		}
	}
	return nil
}

// ResetBackoff ends the shared backoff of key's credential on every
// instance, as Source.ResetBackoff does, making the key's Source if the Map
// holds none. It returns ErrClosed after Close.
func (m *Map) ResetBackoff(ctx context.Context, key string) error {
	sl, err := m.get(ctx, key)
	if err != nil {
		return err
	}
	return sl.src.ResetBackoff(ctx)
}

// Len returns how many keys the Map holds a Source for.
func (m *Map) Len() int { return int(m.n.Load()) }

// Close stops the sweeps and closes every Source of the Map. Token and
// ResetBackoff return ErrClosed afterwards, and so do calls waiting when
// Close runs. Shared tokens stay in the store. Close is idempotent and
// always returns nil; it returns once every Source is closed (see
// Source.Close: about a second at most for each Source blocked in I/O, 16
// at a time).
func (m *Map) Close() error {
	m.once.Do(func() {
		m.closed.Store(true)
		m.sweep.halt()
		var srcs []*Source
		m.slots.Range(func(k, v any) bool {
			if sl, ok := v.(*slot); ok {
				m.drop(k.(string), sl)
				srcs = append(srcs, sl.src)
			}
			return true
		})
		closeAll(srcs)
	})
	return nil
}

// get returns key's slot, making it, or waiting for the caller that makes
// it, if the Map holds none.
func (m *Map) get(ctx context.Context, key string) (*slot, error) {
	for {
		v, ok := m.slots.Load(key)
		if !ok {
			if m.closed.Load() {
				return nil, ErrClosed
			}
			c := &creation{done: make(chan struct{})}
			if v, ok = m.slots.LoadOrStore(key, c); !ok {
				return m.create(ctx, key, c)
			}
		}
		if sl, ok := v.(*slot); ok {
			return sl, nil
		}
		c := v.(*creation)
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, ctxErr(fmt.Sprintf("token: map: %s: waiting for its Source to be made", key), ctx)
		}
		switch {
		case c.err == nil:
			return c.sl, nil
		case !c.ctxEnded || ctx.Err() != nil:
			return nil, c.err
		}
		// The caller that ran the factory gave up; this one may not have.
	}
}

// create runs the factory for key, whose creation c the caller has put in
// slots, and replaces c with the slot made. If the factory fails (or
// panics), it removes c, so that the next call runs the factory again.
func (m *Map) create(ctx context.Context, key string, c *creation) (*slot, error) {
	c.err = fmt.Errorf("token: map: %s: the SourceFactory panicked", key)
	defer func() {
		if c.sl == nil {
			m.slots.CompareAndDelete(key, c)
		}
		close(c.done)
	}()
	src, err := m.factory(ctx, key)
	switch {
	case err != nil:
		c.err, c.ctxEnded = fmt.Errorf("token: map: %s: %w", key, err), ctx.Err() != nil
		return nil, c.err
	case src == nil:
		c.err = fmt.Errorf("%w: map: %s: the SourceFactory returned a nil Source", ErrInvalidConfig, key)
		return nil, c.err
	}
	sl := &slot{src: src, born: time.Now().UnixNano()}
	c.sl, c.err = sl, nil
	m.slots.CompareAndSwap(key, c, sl) // only create removes a creation
	m.n.Add(1)
	m.sweep.start(m)
	if m.closed.Load() {
		// Close ran meanwhile; its walk over slots may have missed sl.
		m.drop(key, sl)
		_ = src.Close()
		return nil, ErrClosed
	}
	return sl, nil
}

// drop removes key's slot sl, if slots still holds it.
func (m *Map) drop(key string, sl *slot) {
	if m.slots.CompareAndDelete(key, sl) {
		m.n.Add(-1)
	}
}

// evictedUnder reports whether err is the ErrClosed of a Source that the
// Map evicted while the caller used it: the caller then asks again, and the
// key's next Source serves it.
func (m *Map) evictedUnder(key string, sl *slot, err error) bool {
	if !errors.Is(err, ErrClosed) || !sl.evicted.Load() || m.closed.Load() {
		return false
	}
	m.drop(key, sl) // in case the sweep has not removed it yet
	return true
}

// sweepLoop sweeps every interval until Close, or until the Map holds no
// Source: create starts it again.
func (m *Map) sweepLoop(done chan struct{}) {
	defer close(done)
	t := time.NewTimer(m.interval)
	defer t.Stop()
	prev := time.Now().UnixNano()
	for {
		select {
		case <-m.sweep.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		m.sweepOnce(now, prev)
		prev = now.UnixNano()
		if m.sweep.finished(m) {
			return
		}
		t.Reset(m.interval)
	}
}

// sweepOnce evicts the Sources made before bornBefore (unix ns) that are
// idle at now, and returns how many. It visits every key, holding no lock
// while it does or while it closes Sources.
func (m *Map) sweepOnce(now time.Time, bornBefore int64) int {
	var idle []*Source
	m.slots.Range(func(k, v any) bool {
		if sl, ok := v.(*slot); ok && sl.born < bornBefore && m.evict(k.(string), sl, now) {
			idle = append(idle, sl.src)
		}
		return true
	})
	for _, s := range idle {
		_ = s.Close() // no refresh runs (evict), so Close does not wait
	}
	return len(idle)
}

// evict removes key's slot sl if its Source is idle at now and runs no
// refresh, and stops that Source from starting one; the caller closes it.
// A refresh that runs is never cut short: it may be a fetch the upstream
// has already answered.
func (m *Map) evict(key string, sl *slot, now time.Time) bool {
	if !sl.src.idle(now) {
		sl.idleSeen.Store(false)
		return false
	}
	if !sl.idleSeen.Swap(true) {
		return false
	}
	sl.evicted.Store(true) // before the Source can answer ErrClosed
	if !sl.src.flight.closeIdle() {
		sl.evicted.Store(false)
		return false
	}
	m.drop(key, sl)
	return true
}

// idle reports whether s is idle at now by the quiet-service rule
// (usedWithinLifetime), applied to the latest time its last use can have
// happened. Uses are recorded by phase, at the phase's start (the hot path
// reads no clock), and a phase lasts less than lifetime - window: so a
// Source is idle when no use is recorded within two lifetimes, and then it
// has not been used for more than a lifetime plus window and will not
// refresh ahead again. A Source that never handed out a token is idle.
func (s *Source) idle(now time.Time) bool {
	e := s.near.cur.Load()
	if e == nil {
		return true
	}
	used := e.lastUse()
	if used == 0 {
		return true
	}
	latest := used + int64(time.Duration(s.near.lifetime.Load())-e.at.window)
	return !s.usedWithinLifetime(latest, e.at.window, now)
}

// start runs the sweeper goroutine if none runs and the Map is open.
func (w *sweeper) start(m *Map) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running || m.closed.Load() {
		return
	}
	w.running, w.done = true, make(chan struct{})
	go m.sweepLoop(w.done)
}

// finished reports whether the sweeper goroutine should return because the
// Map holds no Source, and if so records that none runs.
func (w *sweeper) finished(m *Map) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if m.n.Load() > 0 {
		return false
	}
	w.running = false
	return true
}

// halt stops the sweeper goroutine, after its current sweep, and waits for
// it.
func (w *sweeper) halt() {
	w.mu.Lock()
	close(w.stop)
	done := w.done
	w.running = false
	w.mu.Unlock()
	if done != nil {
		<-done
	}
}

// closeWorkers bounds how many Sources Map.Close closes at a time.
const closeWorkers = 16

// closeAll closes srcs, closeWorkers at a time: a Source's Close waits up
// to closeWait for a refresh blocked in I/O, and a stuck store must not
// make closing many credentials take that long for each in turn.
func closeAll(srcs []*Source) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(closeWorkers, len(srcs)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(srcs)); i = next.Add(1) - 1 {
				_ = srcs[i].Close()
			}
		})
	}
	wg.Wait()
}
