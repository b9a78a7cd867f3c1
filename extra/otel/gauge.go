package tokencacheotel

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"go.opentelemetry.io/otel/metric"

	"github.com/tokencache/tokencache/token"
)

// gauge reports the remaining lifetime of the tracked Sources' tokens.
type gauge struct {
	meter metric.Meter
	inst  metric.Float64ObservableGauge
	attrs *attrCache
	// regMu guards reg and closed. It is never taken by the callback, so
	// that registering (which takes the SDK's locks) cannot deadlock with
	// a collection (which holds them while it calls back).
	regMu  sync.Mutex
	reg    metric.Registration
	closed bool
	mu     sync.Mutex // guards tracked; held only to copy or edit it
	// tracked is a map, not a slice, so that untrack is O(1).
	tracked map[*tracked]struct{}
}

// tracked is one Source of the gauge.
type tracked struct {
	name string
	src  weak.Pointer[token.Source]
	// expires is the ExpiresAt (Unix ns) of the token last seen fresh:
	// Cached says nothing about a token in its refresh-ahead window or
	// idle, and that is when its remaining lifetime matters.
	expires atomic.Int64
}

func (g *gauge) init(m metric.Meter, inst metric.Float64ObservableGauge, a *attrCache) {
	g.meter, g.inst, g.attrs = m, inst, a
	g.tracked = make(map[*tracked]struct{})
}

func (g *gauge) track(name string, src *token.Source) (untrack func()) {
	if !g.register() {
		return func() {}
	}
	t := &tracked{name: name, src: weak.Make(src)}
	t.remaining(time.Now()) // remember the token now, if fresh
	g.mu.Lock()
	g.tracked[t] = struct{}{}
	g.mu.Unlock()
	return func() { g.forget(t) }
}

// register registers the callback on the first track; false after close.
func (g *gauge) register() bool {
	g.regMu.Lock()
	defer g.regMu.Unlock()
	if g.closed {
		return false
	}
	if g.reg == nil {
		reg, err := g.meter.RegisterCallback(g.observe, g.inst)
		if err != nil {
			// Only an instrument of another provider is refused; the
			// hooks still record.
			return false
		}
		g.reg = reg
	}
	return true
}

func (g *gauge) forget(t *tracked) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.tracked, t)
}

func (g *gauge) close() error {
	g.regMu.Lock()
	defer g.regMu.Unlock()
	g.closed = true
	var err error
	if g.reg != nil {
		err = g.reg.Unregister()
		g.reg = nil
	}
	g.mu.Lock()
	clear(g.tracked)
	g.mu.Unlock()
	return err
}

// observe is the callback. It calls Cached with no lock held.
func (g *gauge) observe(_ context.Context, o metric.Observer) error {
	g.mu.Lock()
	ts := make([]*tracked, 0, len(g.tracked))
	for t := range g.tracked {
		ts = append(ts, t)
	}
	g.mu.Unlock()
	now := time.Now()
	least, seen := 0.0, false
	for _, t := range ts {
		left, ok := t.remaining(now)
		switch {
		case !ok:
			if t.src.Value() == nil {
				g.forget(t) // collected: nobody can untrack it
			}
		case g.attrs.withCred:
			o.ObserveFloat64(g.inst, left, g.attrs.get(t.name, key{kind: kindPlain}).obs...)
		case !seen || left < least:
			least, seen = left, true
		}
	}
	if seen && !g.attrs.withCred {
		o.ObserveFloat64(g.inst, least, g.attrs.get("", key{kind: kindPlain}).obs...)
	}
	return nil
}

// remaining returns the seconds left to the token t's Source serves, or
// false if there is none known or it has expired.
func (t *tracked) remaining(now time.Time) (float64, bool) {
	src := t.src.Value()
	if src == nil {
		return 0, false
	}
	if tok, ok := src.Cached(); ok {
		t.expires.Store(tok.ExpiresAt.UnixNano())
	}
	exp := t.expires.Load()
	if exp == 0 {
		return 0, false
	}
	left := time.Unix(0, exp).Sub(now)
	if left <= 0 {
		return 0, false
	}
	return left.Seconds(), true
}
