package scenario

import (
	"context"
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
)

// Probe stands between a Source and its Store and Locker and records what
// the Source did with them, so that a test waits for the Source's
// background work (the re-read after an event, the save after a refresh,
// a waiter's failed TryLock) on a channel instead of sleeping. Pass it to
// token.NewSource as both Store and Locker.
type Probe struct {
	store  token.Store
	locker token.Locker

	mu      sync.Mutex
	n       Counts
	changed chan struct{} // closed and replaced on every change
}

// Counts is what a Probe has seen so far.
type Counts struct {
	// Calls counts the store and lock calls that returned, failed or not,
	// including the release of a lock.
	Calls int
	// Loads counts the Load calls started; LoadsDone those that returned.
	Loads, LoadsDone int
	// Saves and TryLocks count the calls that returned, failed or not;
	// Refused counts the TryLocks that found the lock held elsewhere.
	Saves, TryLocks, Refused int
	// InFlight counts the calls under way and the locks held.
	InFlight int
	// Events counts, by kind, the events the Source has finished handling,
	// and LoadsBefore is Loads when it finished handling the last one of
	// each kind: LoadsDone > LoadsBefore[k] means a read the Source started
	// after that event has returned.
	Events, LoadsBefore map[token.EventKind]int
}

// NewProbe returns a Probe in front of st and l.
func NewProbe(st token.Store, l token.Locker) *Probe {
	return &Probe{store: st, locker: l, n: Counts{Events: map[token.EventKind]int{}, LoadsBefore: map[token.EventKind]int{}}, changed: make(chan struct{})}
}

// Counts returns what the Probe has seen so far.
func (p *Probe) Counts() Counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.n
	c.Events, c.LoadsBefore = maps.Clone(p.n.Events), maps.Clone(p.n.LoadsBefore)
	return c
}

// Wait returns the counts once cond holds for them, and fails the test if
// it does not within timeout. cond is checked again after every change.
func (p *Probe) Wait(t testing.TB, timeout time.Duration, what string, cond func(Counts) bool) Counts {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		p.mu.Lock()
		changed := p.changed
		p.mu.Unlock()
		c := p.Counts()
		if cond(c) {
			return c
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("not within %v: %s (the Source's calls and events so far: %+v)", timeout, what, c)
		}
	}
}

func (p *Probe) update(f func(*Counts)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(&p.n)
	close(p.changed)
	p.changed = make(chan struct{})
}

// call records a call from its start to its end; done, if not nil,
// updates the counts when it returns.
func (p *Probe) call(start func(*Counts), done func(*Counts)) func() {
	p.update(func(c *Counts) {
		c.InFlight++
		if start != nil {
			start(c)
		}
	})
	return func() {
		p.update(func(c *Counts) {
			c.InFlight--
			c.Calls++
			if done != nil {
				done(c)
			}
		})
	}
}

func (p *Probe) Load(ctx context.Context) (token.Shared, error) {
	defer p.call(func(c *Counts) { c.Loads++ }, func(c *Counts) { c.LoadsDone++ })()
	return p.store.Load(ctx)
}

func (p *Probe) Save(ctx context.Context, sh token.Shared) error {
	defer p.call(nil, func(c *Counts) { c.Saves++ })()
	return p.store.Save(ctx, sh)
}

// TryLock counts a lock it obtains as in flight until it is released.
func (p *Probe) TryLock(ctx context.Context) (token.Held, error) {
	end := p.call(nil, nil)
	h, err := p.locker.TryLock(ctx)
	p.update(func(c *Counts) {
		c.TryLocks++
		if errors.Is(err, token.ErrLocked) {
			c.Refused++
		}
		if err == nil {
			c.InFlight++ // until Release
		}
	})
	end()
	if err != nil {
		return h, err
	}
	return &probedHeld{Held: h, p: p}, nil
}

type probedHeld struct {
	token.Held
	p    *Probe
	once sync.Once
}

func (h *probedHeld) Release(ctx context.Context) error {
	defer h.once.Do(func() { h.p.update(func(c *Counts) { c.InFlight-- }) })
	defer h.p.call(nil, nil)()
	return h.Held.Release(ctx)
}

func (p *Probe) NextVersion(ctx context.Context) (int64, error) {
	defer p.call(nil, nil)()
	return p.store.NextVersion(ctx)
}

func (p *Probe) Invalidate(ctx context.Context, version int64) (bool, error) {
	defer p.call(nil, nil)()
	return p.store.Invalidate(ctx, version)
}

func (p *Probe) LoadBackoff(ctx context.Context) (token.SharedBackoff, error) {
	defer p.call(nil, nil)()
	return p.store.LoadBackoff(ctx)
}

func (p *Probe) SaveBackoff(ctx context.Context, b token.SharedBackoff) error {
	defer p.call(nil, nil)()
	return p.store.SaveBackoff(ctx, b)
}

// Watch counts each event once the Source's fn has returned.
func (p *Probe) Watch(fn func(token.Event)) (stop func()) {
	return p.store.Watch(func(ev token.Event) {
		fn(ev)
		p.update(func(c *Counts) {
			c.Events[ev.Kind]++
			c.LoadsBefore[ev.Kind] = c.Loads
		})
	})
}

// ReadAfter reports whether the Source has handled an event of kind k and
// has since finished a read it started after it, with no call under way:
// the re-read an event (or a subscription's Resync) causes is over.
func (c Counts) ReadAfter(k token.EventKind) bool {
	return c.Events[k] > 0 && c.LoadsDone > c.LoadsBefore[k] && c.InFlight == 0
}
