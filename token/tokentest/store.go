package tokentest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tokencache/tokencache/token"
)

// Store is an in-memory token.Store and token.Locker for one credential.
// Sources that share a Store behave like instances that share Redis, so the
// coordinator can be tested without a server.
type Store struct {
	mu       sync.Mutex
	sh       token.Shared
	expires  time.Time
	next     int64
	written  int64
	locked   bool
	watchers map[*func(token.Event)]struct{}
	loads    int
	silent   bool
	killed   int64 // last version invalidated
	backoff  token.SharedBackoff
	until    time.Time
	down     bool
	readOnly bool
	calls    int
	identity string // of the last token saved with one
	// order is that of the last value offered, until orderExpires.
	order        int64
	orderExpires time.Time
	// refresh is the refresh state; refreshGen survives DeleteRefresh.
	refresh    string
	refreshGen int64
}

// ErrDown is what a Store returns while SetDown(true) is in force.
var ErrDown = errors.New("tokentest: store down")

// SetDown makes every call fail with ErrDown while down is true, as when
// Redis is unreachable.
func (s *Store) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

func (s *Store) isDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.down
}

// ErrReadOnly is what writes return while SetReadOnly(true) is in force.
var ErrReadOnly = errors.New("tokentest: store refuses writes")

// SetReadOnly makes every write (NextVersion, Save, Invalidate, SaveBackoff,
// TryLock) fail with ErrReadOnly while reads still work, as a Redis out of
// memory or a read-only replica does.
func (s *Store) SetReadOnly(ro bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readOnly = ro
}

// writeErr returns the error a write gets now, if any.
func (s *Store) writeErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.down:
		return ErrDown
	case s.readOnly:
		return ErrReadOnly
	}
	return nil
}

func (s *Store) count() {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
}

// Calls returns how many calls the Store has answered, reads and writes,
// failed or not, except Watch.
func (s *Store) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// LoadBackoff implements token.Store.
func (s *Store) LoadBackoff(ctx context.Context) (token.SharedBackoff, error) {
	s.count()
	if s.isDown() {
		return token.SharedBackoff{}, ErrDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.backoff
	b.Remaining = max(0, time.Until(s.until))
	return b, nil
}

// SaveBackoff implements token.Store.
func (s *Store) SaveBackoff(ctx context.Context, b token.SharedBackoff) error {
	s.count()
	if err := s.writeErr(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backoff, s.until = b, time.Now().Add(b.Remaining)
	return nil
}

// SetSilent makes Save and Invalidate notify no one while silent is true, as
// when a subscription is down and notifications are lost.
func (s *Store) SetSilent(silent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.silent = silent
}

// Notify sends ev to every watcher, silent or not.
func (s *Store) Notify(ev token.Event) {
	s.mu.Lock()
	silent := s.silent
	s.silent = false
	fns := s.fns()
	s.silent = silent
	s.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{watchers: make(map[*func(token.Event)]struct{})}
}

// Loads returns how many times Load was called.
func (s *Store) Loads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

// Load implements token.Store.
func (s *Store) Load(ctx context.Context) (token.Shared, error) {
	s.count()
	if s.isDown() {
		return token.Shared{}, ErrDown
	}
	if err := ctx.Err(); err != nil {
		return token.Shared{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	fence := token.Fence{Written: s.written, Invalidated: s.killed, Identity: s.identity}
	ttl := time.Until(s.expires)
	if s.sh.Value == "" || ttl <= 0 {
		if s.killed > 0 && s.killed == s.written {
			return token.Shared{Fence: fence}, fmt.Errorf("%w: %w", token.ErrNotFound, token.ErrInvalidated)
		}
		return token.Shared{Fence: fence}, token.ErrNotFound
	}
	sh := s.sh
	sh.TTL = ttl
	sh.Fence = fence
	return sh, nil
}

// NextVersion implements token.Store.
func (s *Store) NextVersion(ctx context.Context) (int64, error) {
	s.count()
	if err := s.writeErr(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	return s.next, nil
}

// Save implements token.Store.
func (s *Store) Save(ctx context.Context, sh token.Shared) error {
	_, err := s.write(sh, nil)
	return err
}

// Offer implements token.Offerer.
func (s *Store) Offer(ctx context.Context, sh token.Shared, p token.Push) (bool, error) {
	return s.write(sh, &p)
}

// write is Save, or Offer if p is set.
func (s *Store) write(sh token.Shared, p *token.Push) (bool, error) {
	s.count()
	if err := s.writeErr(); err != nil {
		return false, err
	}
	s.mu.Lock()
	if p != nil && sh.Identity != "" && s.identity != "" && s.identity != sh.Identity && time.Now().Before(s.expires) {
		s.mu.Unlock()
		return false, token.ErrIdentityMismatch
	}
	if p != nil && time.Now().Before(s.orderExpires) {
		switch {
		case p.Order <= s.order:
			s.mu.Unlock()
			return false, nil
		case p.MaxLead > 0 && p.Order-s.order > p.MaxLead:
			s.mu.Unlock()
			return false, token.ErrPushTooFarAhead
		}
	}
	if sh.Version <= s.written {
		s.mu.Unlock()
		return false, token.ErrFenced
	}
	if p != nil {
		s.order, s.orderExpires = p.Order, time.Now().Add(sh.TTL)
	}
	s.written = sh.Version
	if sh.Identity != "" {
		s.identity = sh.Identity
	}
	s.sh, s.expires = sh, time.Now().Add(sh.TTL)
	s.backoff, s.until = token.SharedBackoff{}, time.Time{}
	fns := s.fns()
	s.mu.Unlock()
	for _, fn := range fns {
		fn(token.Event{Kind: token.Refreshed, Version: sh.Version})
	}
	return true, nil
}

// Invalidate implements token.Store.
func (s *Store) Invalidate(ctx context.Context, version int64) (bool, error) {
	s.count()
	if err := s.writeErr(); err != nil {
		return false, err
	}
	s.mu.Lock()
	// An expired token is no longer stored (Load says ErrNotFound): there
	// is nothing to remove, as in Redis.
	if s.sh.Value == "" || s.sh.Version != version || !time.Now().Before(s.expires) {
		s.mu.Unlock()
		return false, nil
	}
	s.sh = token.Shared{}
	s.killed = version
	fns := s.fns()
	s.mu.Unlock()
	for _, fn := range fns {
		fn(token.Event{Kind: token.Invalidated, Version: version})
	}
	return true, nil
}

func (s *Store) fns() []func(token.Event) {
	if s.silent {
		return nil
	}
	fns := make([]func(token.Event), 0, len(s.watchers))
	for fn := range s.watchers {
		fns = append(fns, *fn)
	}
	return fns
}

// Watch implements token.Store.
func (s *Store) Watch(fn func(token.Event)) (stop func()) {
	p := &fn
	s.mu.Lock()
	s.watchers[p] = struct{}{}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.watchers, p)
		s.mu.Unlock()
	}
}

// TryLock implements token.Locker. The lock does not expire.
func (s *Store) TryLock(ctx context.Context) (token.Held, error) {
	s.count()
	if err := s.writeErr(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locked {
		return nil, token.ErrLocked
	}
	s.locked = true
	h := &held{s: s}
	h.ctx, h.cancel = context.WithCancel(ctx)
	return h, nil
}

type held struct {
	s      *Store
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
}

func (h *held) Context() context.Context { return h.ctx }

func (h *held) Release(context.Context) error {
	h.once.Do(func() {
		h.cancel()
		h.s.mu.Lock()
		h.s.locked = false
		h.s.mu.Unlock()
	})
	return nil
}

// LoadRefresh implements token.RefreshStore.
func (s *Store) LoadRefresh(ctx context.Context) (token.RefreshState, error) {
	s.count()
	if s.isDown() {
		return token.RefreshState{}, ErrDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refresh == "" {
		return token.RefreshState{}, token.ErrNoRefreshState
	}
	return token.RefreshState{Value: s.refresh, Generation: s.refreshGen}, nil
}

// CommitRefresh implements token.RefreshStore.
func (s *Store) CommitRefresh(ctx context.Context, gen int64, next string) error {
	s.count()
	if err := s.writeErr(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refresh == "" || gen != s.refreshGen {
		return token.ErrFenced
	}
	s.refresh, s.refreshGen = next, gen+1
	return nil
}

// SaveRotated implements token.RotationSaver: the commit, then the save.
func (s *Store) SaveRotated(ctx context.Context, sh token.Shared, gen int64, next string) error {
	if err := s.CommitRefresh(ctx, gen, next); err != nil {
		return err
	}
	return s.Save(ctx, sh)
}

// SeedRefresh implements token.RefreshStore.
func (s *Store) SeedRefresh(ctx context.Context, value string) (int64, error) {
	s.count()
	if err := s.writeErr(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshGen++
	s.refresh = value
	return s.refreshGen, nil
}

// DeleteRefresh implements token.RefreshStore.
func (s *Store) DeleteRefresh(ctx context.Context) error {
	s.count()
	if err := s.writeErr(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh = ""
	return nil
}
