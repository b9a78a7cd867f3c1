package token

import (
	"context"
	"errors"
	"time"
)

// Sweeping reports whether m's sweeper goroutine runs.
func Sweeping(m *Map) bool {
	m.sweep.mu.Lock()
	defer m.sweep.mu.Unlock()
	return m.sweep.running
}

// TokenEvictedUnder does what Map.Token does for key when the sweep evicts
// key's Source between the caller's lookup and its call: it evicts and
// closes the Source it looked up, calls it, and then asks the Map again if
// the Map says so. closed reports that the call got ErrClosed first.
func TokenEvictedUnder(ctx context.Context, m *Map, key string) (tok Token, closed bool, err error) {
	sl, err := m.get(ctx, key)
	if err != nil {
		return Token{}, false, err
	}
	later := time.Now().Add(1000 * time.Hour)
	m.evict(key, sl, later) // the first sweep that finds it idle
	if !m.evict(key, sl, later) {
		return Token{}, false, errors.New("not evicted")
	}
	_ = sl.src.Close()
	tok, err = sl.src.Token(ctx)
	closed = errors.Is(err, ErrClosed)
	if err != nil && m.evictedUnder(key, sl, err) {
		tok, err = m.Token(ctx, key)
	}
	return tok, closed, err
}

// SweepOnce runs the two sweeps that evict an idle Source, now, as if every
// Source were made before the previous sweep, and returns how many they
// evicted.
func SweepOnce(m *Map) int {
	now := time.Now()
	return m.sweepOnce(now, now.UnixNano()) + m.sweepOnce(now, now.UnixNano())
}
