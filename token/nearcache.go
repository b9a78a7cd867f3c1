package token

// The near cache: the token this instance serves, read with two atomic
// loads on the hot path. A timer, not a clock read, marks it stale.

import (
	"sync/atomic"
	"time"
)

// Entry states. An entry is fresh or idle until its refresh-ahead
// deadline, then ahead (valid, refresh wanted) until it expires; superseded
// means another instance announced a newer token or the token was
// invalidated. Only a fresh entry is served by the hot path: the first call
// that finds an entry idle takes the slow path once and makes it fresh,
// which is how a Source learns, at no cost to the hot path, that its token
// is in use. The entry's timer makes it idle again at the probe point, one
// refresh-ahead window before the deadline (see onTimer).
const (
	stateFresh int32 = iota // fresh, and used in the current phase
	stateIdle               // fresh, not used in the current phase
	stateAhead
	stateSuperseded
)

// nearCache is the token this instance serves and what was announced about
// the credential's versions. It has no mutex: the hot path reads cur and the
// entry's state, two atomic loads.
type nearCache struct {
	cur atomic.Pointer[entry]
	// dead and seen are the highest versions announced as invalidated and
	// as written. Announcements come from outside and are clamped to the
	// store's Fence when a later read contradicts them (see confirm).
	dead, seen atomic.Int64
	// killed is the highest version this Source itself invalidated: unlike
	// dead, it is never clamped.
	killed atomic.Int64
	// deaf is set while the store reports that notifications are not
	// delivered (Unsubscribed): entries are re-read on demand.
	deaf atomic.Bool
	// lifetime is that of the last token installed, in ns: it bounds
	// fetches per lifetime.
	lifetime atomic.Int64
}

// schedule is when an entry's timer acts.
type schedule struct {
	// staleAt is when the hot path stops serving the entry: aheadAt, or
	// earlier when it must be re-read after a poll interval. aheadAt is its
	// refresh-ahead deadline, and window the length of that window.
	staleAt, aheadAt time.Time
	window           time.Duration
}

// entry is the near-cached token. Its state is flipped by a timer, so that
// the hot path reads no clock.
type entry struct {
	tok      Token
	version  int64
	deadline time.Time // expiry on the monotonic clock
	state    atomic.Int32
	bad      atomic.Bool // reported invalid (Invalidate)
	at       schedule    // written once, in install
	// phase is when the current use phase began (install, then the probe);
	// used is when the latest phase known to hold a use began, or a use
	// itself in the ahead state; zero if none. Unix ns.
	phase, used atomic.Int64
	timer       *time.Timer
}

func (e *entry) valid() bool { return e != nil && time.Now().Before(e.deadline) }

// markUsed records that a caller was handed e. A use the state cannot
// record (e is fresh already, ahead, or superseded meanwhile) is recorded as
// a time, on e and on the entry that replaced it, so that the quiet-service
// rule and a Map see it whatever events raced with the call.
func (s *Source) markUsed(e *entry) {
	if e.state.CompareAndSwap(stateIdle, stateFresh) {
		return
	}
	now := time.Now().UnixNano()
	raise(&e.used, now)
	if cur := s.near.cur.Load(); cur != nil && cur != e {
		raise(&cur.used, now)
	}
}

// lastUse is when the latest phase known to hold a use began (zero if none).
func (e *entry) lastUse() int64 {
	if e.state.Load() == stateFresh {
		return max(e.used.Load(), e.phase.Load())
	}
	return e.used.Load()
}

// endPhase ends the current use phase at now, moving a fresh or idle entry
// to next (idle or ahead). It reports false if e was superseded.
func (e *entry) endPhase(next int32, now time.Time) bool {
	for {
		switch st := e.state.Load(); st {
		case stateSuperseded:
			return false
		case stateAhead:
			return true
		case stateFresh, stateIdle:
			if !e.state.CompareAndSwap(st, next) {
				continue
			}
			if st == stateFresh {
				e.used.Store(e.phase.Load())
			}
			e.phase.Store(now.UnixNano())
			return true
		}
	}
}

// stale stops the hot path from serving e: callers re-read or refresh.
func (e *entry) stale() {
	if e.state.CompareAndSwap(stateFresh, stateAhead) {
		raise(&e.used, e.phase.Load()) // the phase held a use: keep it (lastUse)
	}
	e.state.CompareAndSwap(stateIdle, stateAhead)
}

// supersede marks e superseded: a newer token was announced, or e was
// invalidated. A use of its current phase is kept, so that lastUse, and
// the entry that replaces e, still count it.
func (e *entry) supersede() {
	if e.state.Swap(stateSuperseded) == stateFresh {
		raise(&e.used, e.phase.Load())
	}
}

// alive reports whether e was not invalidated, given the highest invalidated
// version. Version 0 (fetched without the store) has no version to compare:
// Invalidate marks it bad.
func (e *entry) alive(dead int64) bool {
	return !e.bad.Load() && (e.version == 0 || e.version > dead)
}

func (s *Source) fresh(sh Shared) bool {
	return sh.TTL > s.opts.window(sh.Lifetime)
}

// adopt makes sh the near-cached token and returns its entry, or nil if sh
// was invalidated or replaced meanwhile. The entry turns stale at the start of its
// refresh-ahead window, or after recheck if that is set.
func (s *Source) adopt(sh Shared, recheck time.Duration) *entry {
	if sh.Version <= s.near.dead.Load() || sh.Version < s.near.seen.Load() {
		return nil
	}
	e := s.install(sh, recheck)
	if sh.Version <= s.near.dead.Load() || sh.Version < s.near.seen.Load() {
		// Invalidated, or announced as replaced, while we installed it:
		// onEvent may have missed this entry, so mark it.
		e.state.Store(stateSuperseded)
		return nil
	}
	s.pending.drop("") // the store's token wins over one fetched without it
	s.gate.endBackoff()
	return e
}

// install makes sh the near-cached token. While notifications are not
// delivered, it is read again after a poll interval if a caller asks.
func (s *Source) install(sh Shared, recheck time.Duration) *entry {
	if s.near.deaf.Load() && recheck == 0 {
		recheck = s.opts.PollInterval
	}
	s.near.lifetime.Store(int64(sh.Lifetime))
	now := time.Now()
	e := &entry{
		tok:      Token{Value: sh.Value, ExpiresAt: s.opts.Now().Add(sh.TTL)},
		version:  sh.Version,
		deadline: now.Add(sh.TTL),
		at:       schedule{window: s.opts.window(sh.Lifetime)},
	}
	e.at.aheadAt = e.deadline.Add(-e.at.window)
	e.at.staleAt = e.at.aheadAt
	if recheck > 0 {
		e.at.staleAt = now.Add(min(recheck, sh.TTL/2))
	}
	e.state.Store(stateIdle)
	e.phase.Store(now.UnixNano())
	if old := s.near.cur.Load(); old != nil {
		e.used.Store(old.lastUse()) // a use of the token this one replaces counts
	}
	if s.life.ctx.Err() != nil {
		// Closed: a refresh that outlived Close must not near-cache
		// anything, or the hot path would serve it.
		e.state.Store(stateSuperseded)
		return e
	}
	if !e.at.staleAt.After(now) {
		e.state.Store(stateAhead)
	}
	e.timer = time.AfterFunc(e.nextTimer(now), func() { s.onTimer(e) })
	if old := s.near.cur.Swap(e); old != nil && old.timer != nil {
		old.timer.Stop()
	}
	if s.near.deaf.Load() && recheck == 0 {
		// Unsubscribed arrived after the check above: onEvent may have
		// flipped the previous entry instead of this one.
		e.stale()
	}
	return e
}

// nextTimer is when e's timer must fire next after now: at the probe point
// (one window before the refresh-ahead deadline), when the entry turns
// stale, and at the refresh-ahead deadline.
func (e *entry) nextTimer(now time.Time) time.Duration {
	probe := e.at.aheadAt.Add(-e.at.window)
	switch {
	case probe.After(now) && probe.Before(e.at.staleAt):
		return probe.Sub(now)
	case e.at.staleAt.After(now):
		return e.at.staleAt.Sub(now)
	case e.at.aheadAt.After(now):
		return e.at.aheadAt.Sub(now)
	}
	return 0
}

// onTimer ends a use phase of the current entry at its probe point, turns
// it stale when due, and at its refresh-ahead deadline refreshes it without
// a caller if it was used within its last lifetime (plus one window): a
// quiet service never waits for a fetch, and an idle credential fetches
// nothing.
func (s *Source) onTimer(e *entry) {
	if s.near.cur.Load() != e {
		return
	}
	now := time.Now()
	next := stateIdle
	if !now.Before(e.at.staleAt) {
		next = stateAhead
	}
	if !e.endPhase(next, now) {
		return
	}
	if now.Before(e.at.aheadAt) {
		e.timer.Reset(e.nextTimer(now))
		return
	}
	if s.usedWithinLifetime(e.used.Load(), e.at.window, now) && s.gate.mayRetry() {
		s.refresh()
	}
}

// usedWithinLifetime is the quiet-service rule, the one definition of
// "idle": a credential last used (unix ns, 0 if never) within one token
// lifetime before now is in use, and onTimer refreshes it ahead of expiry
// without a caller. One idle for longer is not refreshed, and a Map may
// evict it (Source.idle). Uses are recorded, at no cost to the hot path, as
// the start of the phase that held them, so the rule allows the slack of
// one phase: the refresh-ahead window, at most a quarter of the lifetime.
func (s *Source) usedWithinLifetime(used int64, window time.Duration, now time.Time) bool {
	lifetime := time.Duration(s.near.lifetime.Load())
	return used != 0 && now.UnixNano()-used <= int64(lifetime+useSlack(lifetime, window))
}

// useSlack is the precision of a recorded use: one phase.
func useSlack(lifetime, window time.Duration) time.Duration {
	return min(window, lifetime/4)
}
