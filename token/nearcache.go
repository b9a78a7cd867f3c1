package token

// The near cache: the token this instance serves, read with two atomic
// loads on the hot path. A timer, not a clock read, marks it stale.

import (
	"sync/atomic"
	"time"
)

// Entry states. An entry is fresh until its refresh-ahead deadline, then
// ahead (valid, refresh wanted) until it expires; superseded means another
// instance announced a newer token or the token was invalidated.
const (
	stateFresh int32 = iota
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

// entry is the near-cached token. Its state is flipped by a timer, so that
// the hot path reads no clock.
type entry struct {
	tok      Token
	version  int64
	deadline time.Time // expiry on the monotonic clock
	state    atomic.Int32
	bad      atomic.Bool // reported invalid (Invalidate)
	timer    *time.Timer
}

func (e *entry) valid() bool { return e != nil && time.Now().Before(e.deadline) }

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
	e := &entry{
		tok:      Token{Value: sh.Value, ExpiresAt: s.opts.Now().Add(sh.TTL)},
		version:  sh.Version,
		deadline: time.Now().Add(sh.TTL),
	}
	if s.life.ctx.Err() != nil {
		// Closed: a refresh that outlived Close must not near-cache
		// anything, or the hot path would serve it.
		e.state.Store(stateSuperseded)
		return e
	}
	staleIn := sh.TTL - s.opts.window(sh.Lifetime)
	if recheck > 0 {
		staleIn = min(recheck, sh.TTL/2)
	}
	if staleIn <= 0 {
		e.state.Store(stateAhead)
	} else {
		e.timer = time.AfterFunc(staleIn, func() { e.state.CompareAndSwap(stateFresh, stateAhead) })
	}
	if old := s.near.cur.Swap(e); old != nil && old.timer != nil {
		old.timer.Stop()
	}
	if s.near.deaf.Load() && recheck == 0 {
		// Unsubscribed arrived after the check above: onEvent may have
		// flipped the previous entry instead of this one.
		e.state.CompareAndSwap(stateFresh, stateAhead)
	}
	return e
}
