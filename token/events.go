package token

// Events from the store: notifications of other instances' writes and
// invalidations, and the checks that keep an untrusted event from making a
// Source fetch.

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// confirm checks the versions announced before a read (seen, dead) against
// the store's fence from that read. An announcement the store contradicts
// was forged, came from another deployment, or was lost with the store's
// data: it is clamped to what the store says, so that it can never make
// this Source refuse the store's token and fetch again.
func (s *Source) confirm(seen, dead int64, f Fence) {
	if seen > f.Written && s.seen.CompareAndSwap(seen, f.Written) {
		s.distrust("refreshed", seen, f.Written)
	}
	if trusted := max(f.Invalidated, s.killed.Load()); dead > trusted && s.dead.CompareAndSwap(dead, trusted) {
		s.distrust("invalidated", dead, trusted)
	}
}

// distrust warns about an unconfirmed event, at most once a minute.
func (s *Source) distrust(kind string, announced, stored int64) {
	now := time.Now().UnixNano()
	last := s.distrusts.Load()
	if now-last < int64(time.Minute) || !s.distrusts.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("tokencache: ignoring a notification the store does not confirm (forged, from another deployment sharing the channel, or lost with the store's data)",
		slog.String("event", kind), slog.Int64("announced_version", announced), slog.Int64("store_version", stored))
}

// onEvent reacts to a change announced by the store.
func (s *Source) onEvent(ev Event) {
	e := s.cur.Load()
	switch ev.Kind {
	case Refreshed:
		raise(&s.seen, ev.Version)
		if e != nil && e.version >= ev.Version {
			return
		}
	case Invalidated:
		raise(&s.dead, ev.Version)
		if e != nil && e.version > ev.Version {
			return
		}
	case Unsubscribed:
		// Re-read the current token when a caller next asks, and every
		// token installed from now on after a poll interval.
		s.deaf.Store(true)
		if e != nil {
			e.state.CompareAndSwap(stateFresh, stateAhead)
		}
		return
	case Resync:
		s.deaf.Store(false)
	default:
		return
	}
	if e != nil && ev.Kind != Resync {
		e.state.Store(stateSuperseded)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.Kind == Refreshed {
		// A token was saved: whatever backoff or store failure this
		// instance knew of is over.
		s.endBackoffLocked()
		s.failErr = nil
	}
	close(s.wake)
	s.wake = make(chan struct{})
	switch {
	case s.closed:
	case s.flight != nil:
		// The running refresh may have read before this event.
		s.again = true
	case e == nil, ev.Kind == Resync && !e.valid():
		// Nobody holds this token; waiters were woken.
	default:
		s.startLocked()
	}
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
