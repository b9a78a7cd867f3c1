package token

// Events from the store: notifications of other instances' writes and
// invalidations, and the checks that keep an untrusted event from making a
// Source fetch.

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// confirm checks the versions announced before a read (seen, dead) against
// the store's fence from that read. An announcement the store contradicts
// was forged, came from another deployment, or was lost with the store's
// data: it is clamped to what the store says, so that it can never make
// this Source refuse the store's token and fetch again.
func (s *Source) confirm(seen, dead int64, f Fence) {
	if seen > f.Written && s.near.seen.CompareAndSwap(seen, f.Written) {
		s.distrust("refreshed", seen, f.Written)
	}
	if trusted := max(f.Invalidated, s.near.killed.Load()); dead > trusted && s.near.dead.CompareAndSwap(dead, trusted) {
		s.distrust("invalidated", dead, trusted)
	}
}

// distrust warns about an unconfirmed event, at most once a minute.
func (s *Source) distrust(kind string, announced, stored int64) {
	now := time.Now().UnixNano()
	last := s.warn.distrusted.Load()
	if now-last < int64(time.Minute) || !s.warn.distrusted.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("tokencache: ignoring a notification the store does not confirm (forged, from another deployment sharing the channel, or lost with the store's data)",
		slog.String("event", kind), slog.Int64("announced_version", announced), slog.Int64("store_version", stored))
}

// onEvent reacts to a change announced by the store.
func (s *Source) onEvent(ev Event) {
	e := s.near.cur.Load()
	switch ev.Kind {
	case Refreshed:
		raise(&s.near.seen, ev.Version)
		if e != nil && e.version >= ev.Version {
			return
		}
	case Invalidated:
		raise(&s.near.dead, ev.Version)
		if e != nil && e.version > ev.Version {
			return
		}
	case Unsubscribed:
		// Re-read the current token when a caller next asks, and every
		// token installed from now on after a poll interval.
		s.near.deaf.Store(true)
		if e != nil {
			e.stale()
		}
		return
	case Resync:
		s.near.deaf.Store(false)
	default:
		return
	}
	if e != nil && ev.Kind != Resync {
		e.supersede()
	}
	if ev.Kind == Refreshed {
		// A token was saved: whatever backoff or store failure this
		// instance knew of is over.
		s.gate.open()
	}
	s.wake.broadcast()
	// The running refresh may have read before this event: it reads again.
	// With none running, refresh the token this Source serves, if any.
	s.flight.rerun(s.refreshOnce, e != nil && (ev.Kind != Resync || e.valid()))
}

// raise sets a to v if v is greater.
func raise(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// signal wakes every goroutine waiting on it.
type signal struct {
	mu sync.Mutex    // guards ch
	ch chan struct{} // closed by broadcast; nil until someone waits
}

// wait returns a channel that the next broadcast closes.
func (g *signal) wait() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
	return g.ch
}

func (g *signal) broadcast() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

// warnings rate-limits log lines, so that an outage or a flood of bad input
// logs a line, not one per call.
type warnings struct {
	outage     atomic.Int32 // outageNone, outageRead or outageWrite
	distrusted atomic.Int64 // unix ns of the last warning about an unconfirmed event
	mismatched atomic.Int64 // unix ns of the last error about another account's token
}
