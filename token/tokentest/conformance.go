package tokentest

// A conformance suite for token.Store and token.Locker implementations, in
// the spirit of testing/fstest.TestFS: every property it checks is one that
// token/store.go documents and token.Source relies on.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
)

// StoreHarness tells TestStore how to make the stores it checks. Only New is
// required; the zero value of every other field skips what needs it or
// waits on the wall clock instead.
type StoreHarness struct {
	// New makes a fresh, empty credential that no other test uses. TestStore
	// calls it once or twice in each subtest, from the subtest's goroutine,
	// with the subtest's t: release what it makes with t.Cleanup.
	New func(t *testing.T) Credential

	// Advance, if set, makes d pass at once on the clock the store measures
	// TTLs with (miniredis's FastForward). If nil, TestStore waits on the
	// wall clock, for TTLs of at most 200ms and for LockTTL.
	Advance func(d time.Duration)

	// LockTTL, if set, is how long a lock outlives a holder that stopped
	// keeping it alive without releasing it. TestStore stops a holder so by
	// cancelling the context it passed to TryLock (a token.Source passes
	// its own, cancelled by Close), and checks that another instance then
	// obtains the lock within about LockTTL. Zero skips that check, for
	// locks that never expire.
	LockTTL time.Duration
}

// Credential is one credential of the store under test, as a StoreHarness
// makes it.
type Credential struct {
	// Open returns a new handle on the credential, as another instance
	// would open it: its own connection and subscription, for a store that
	// has them. Handles of one credential see each other's writes, events
	// and locks; a store without connections may return the same value
	// every time. TestStore checks handles that also implement
	// token.Locker as locks. Required.
	Open func() token.Store

	// Corrupt, if set, overwrites the credential's stored token with a value
	// the store cannot decode (with a TTL, as a foreign writer or a newer
	// release might), leaving the versions it has recorded alone. Without
	// it the malformed-value subtest is skipped.
	Corrupt func()
}

// TestStore checks that the stores h makes keep the contract token.Source
// relies on (see token.Store and token.Locker): fencing versions,
// compare-before-invalidate, TTLs, malformed values, values up to
// token.MaxTokenLen, notifications, the shared backoff record, the refresh
// lock, and concurrent writers. Run it with -race.
//
// Identities are written as token.Source writes them: fingerprints of 32
// (account) or 8 (fetcher) lowercase hex digits.
//
// TestStore checks what it can see through the interfaces only. Two
// properties it cannot: that Watch does no I/O (a harness would have to make
// the store unreachable), and that stop leaves no goroutine behind (check
// that with go.uber.org/goleak in TestMain). Watch's contract says a store
// sends Resync once its subscription is confirmed; a store whose watchers are
// live as soon as Watch returns (such as Store) sends none, so TestStore
// takes either a Resync or the event of a Save made after Watch returned as
// the sign that a watcher is live. Nor does it require what the contract
// leaves open: that fn is never called concurrently, that events arrive in
// order, or that stop may be called twice.
//
// The subtests run one after another, so an Advance may move a clock that
// all of them share.
func TestStore(t *testing.T, h StoreHarness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("tokentest: StoreHarness.New is nil")
	}
	s := suite{h}
	for _, st := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"Empty", s.empty},
		{"Fencing", s.fencing},
		{"Invalidate", s.invalidate},
		{"TTL", s.ttl},
		{"Malformed", s.malformed},
		{"Values", s.values},
		{"Watch", s.watch},
		{"WatchOtherCredential", s.watchOther},
		{"Backoff", s.backoff},
		{"Lock", s.lock},
		{"LockExpires", s.lockExpires},
		{"ConcurrentWriters", s.concurrent},
	} {
		t.Run(st.name, st.run)
	}
}

const (
	// patience bounds every wait for something that should happen at once
	// (an event, a lock or TTL running out): only a failing store uses it
	// up.
	patience = 5 * time.Second
	// shortTTL is the TTL of tokens the suite watches expire.
	shortTTL = 200 * time.Millisecond
	// accountA and accountB are account fingerprints, as Source saves them.
	accountA = "0123456789abcdef0123456789abcdef"
	accountB = "fedcba9876543210fedcba9876543210"
	// fetcherFP is a fetcher fingerprint without an IdentityKey.
	fetcherFP = "89abcdef"
)

type suite struct{ h StoreHarness }

// handles makes a fresh credential and opens n handles on it.
func (s suite) handles(t *testing.T, n int) (Credential, []token.Store) {
	t.Helper()
	c := s.h.New(t)
	if c.Open == nil {
		t.Fatal("tokentest: Credential.Open is nil")
	}
	hs := make([]token.Store, n)
	for i := range hs {
		if hs[i] = c.Open(); hs[i] == nil {
			t.Fatal("tokentest: Credential.Open returned nil")
		}
	}
	return c, hs
}

// wait lets d pass on the store's clock: at once with Advance, else on the
// wall clock (the caller then polls the store until a deadline).
func (s suite) wait(d time.Duration) {
	if s.h.Advance != nil {
		s.h.Advance(d)
	}
}

func next(t *testing.T, st token.Store) int64 {
	t.Helper()
	v, err := st.NextVersion(t.Context())
	if err != nil {
		t.Fatalf("NextVersion: %v", err)
	}
	if v <= 0 {
		t.Fatalf("NextVersion = %d, want a positive version", v)
	}
	return v
}

// shared is a token of version v that lives a minute.
func shared(v int64, value string, identity string) token.Shared {
	return token.Shared{Value: value, Version: v, TTL: time.Minute, Lifetime: 2 * time.Minute, Identity: identity}
}

func save(t *testing.T, st token.Store, sh token.Shared) {
	t.Helper()
	if err := st.Save(t.Context(), sh); err != nil {
		t.Fatalf("Save(version %d) on a credential whose newest version is older: %v", sh.Version, err)
	}
}

// load returns the stored token, failing unless it has version v and value.
func load(t *testing.T, st token.Store, v int64, value string) token.Shared {
	t.Helper()
	got, err := st.Load(t.Context())
	if err != nil {
		t.Fatalf("Load: %v; want the token of version %d", err, v)
	}
	if got.Version != v || got.Value != value {
		t.Fatalf("Load = version %d, %s; want version %d, %s", got.Version, describe(got.Value), v, describe(value))
	}
	return got
}

// describe names a value without printing 32 KiB of it.
func describe(v string) string {
	if len(v) <= 40 {
		return fmt.Sprintf("%q", v)
	}
	return fmt.Sprintf("%q... (%d bytes)", v[:20], len(v))
}

// empty: a fresh credential holds nothing, and says so with a zero fence.
func (s suite) empty(t *testing.T) {
	_, hs := s.handles(t, 1)
	a := hs[0]
	got, err := a.Load(t.Context())
	if !errors.Is(err, token.ErrNotFound) || errors.Is(err, token.ErrInvalidated) {
		t.Errorf("Load = %v; want ErrNotFound without ErrInvalidated", err)
	}
	if got.Fence != (token.Fence{}) || got.Value != "" {
		t.Errorf("Load of an empty credential = %+v; want the zero Shared", got)
	}
	if b, err := a.LoadBackoff(t.Context()); err != nil || b != (token.SharedBackoff{}) {
		t.Errorf("LoadBackoff = %+v, %v; want the zero SharedBackoff", b, err)
	}
}

// fencing: versions grow across instances, and a Save is refused unless its
// version is newer than every one saved, so that a refresher that lost its
// lock can never overwrite a newer token.
func (s suite) fencing(t *testing.T) {
	_, hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	v1, v2, v3 := next(t, a), next(t, b), next(t, a)
	if !(v1 < v2 && v2 < v3) {
		t.Fatalf("NextVersion on A, B, A = %d, %d, %d; want strictly increasing across instances", v1, v2, v3)
	}
	sh := shared(v2, "token-v2", accountA)
	save(t, a, sh)

	got := load(t, b, v2, "token-v2")
	if got.Lifetime != sh.Lifetime {
		t.Errorf("Load Lifetime = %v; want %v as saved", got.Lifetime, sh.Lifetime)
	}
	// The TTL counts down from the saved one; far below it means a unit
	// error.
	if got.TTL <= sh.TTL/2 || got.TTL > sh.TTL {
		t.Errorf("Load TTL = %v; want at most the saved %v and not far below", got.TTL, sh.TTL)
	}
	if want := (token.Fence{Written: v2, Identity: accountA}); got.Fence != want {
		t.Errorf("Load Fence = %+v; want %+v", got.Fence, want)
	}

	for _, tc := range []struct {
		name    string
		version int64
	}{
		{"an older issued version", v1},
		{"the version below", v2 - 1},
		{"the same version", v2},
	} {
		if err := b.Save(t.Context(), shared(tc.version, "late", accountA)); !errors.Is(err, token.ErrFenced) {
			t.Errorf("Save of %s (%d) after %d = %v; want ErrFenced", tc.name, tc.version, v2, err)
		}
	}
	load(t, a, v2, "token-v2") // the refused writes changed nothing

	save(t, b, shared(v3, "token-v3", accountB))
	got = load(t, a, v3, "token-v3")
	if want := (token.Fence{Written: v3, Identity: accountB}); got.Fence != want {
		t.Errorf("Load Fence after a newer Save = %+v; want %+v", got.Fence, want)
	}
}

// invalidate: Invalidate removes only the token of the version it names,
// so that a caller reporting a token another instance already replaced does
// not remove the replacement.
func (s suite) invalidate(t *testing.T) {
	_, hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	older, v1 := next(t, a), next(t, a)
	save(t, a, shared(v1, "token-v1", ""))
	newer := next(t, a) // issued, never saved

	for _, wrong := range []int64{older, newer} {
		if ok, err := b.Invalidate(t.Context(), wrong); ok || err != nil {
			t.Errorf("Invalidate(%d) with %d stored = %v, %v; want false, nil", wrong, v1, ok, err)
		}
	}
	got := load(t, a, v1, "token-v1")
	if got.Fence.Invalidated != 0 {
		t.Errorf("Fence.Invalidated = %d after Invalidate of other versions; want 0", got.Fence.Invalidated)
	}

	if ok, err := b.Invalidate(t.Context(), v1); !ok || err != nil {
		t.Fatalf("Invalidate(%d) of the stored version = %v, %v; want true, nil", v1, ok, err)
	}
	got, err := a.Load(t.Context())
	if !errors.Is(err, token.ErrNotFound) || !errors.Is(err, token.ErrInvalidated) {
		t.Errorf("Load after Invalidate = %v; want ErrNotFound and ErrInvalidated", err)
	}
	if want := (token.Fence{Written: v1, Invalidated: v1}); got.Fence != want {
		t.Errorf("Load Fence after Invalidate = %+v; want %+v", got.Fence, want)
	}
	if ok, err := a.Invalidate(t.Context(), v1); ok || err != nil {
		t.Errorf("second Invalidate(%d) = %v, %v; want false, nil (nothing left to remove)", v1, ok, err)
	}
	// An invalidated version was still saved: writing it again is fenced.
	if err := a.Save(t.Context(), shared(v1, "again", "")); !errors.Is(err, token.ErrFenced) {
		t.Errorf("Save of the invalidated version %d = %v; want ErrFenced", v1, err)
	}

	v2 := next(t, b)
	save(t, b, shared(v2, "token-v2", ""))
	got = load(t, a, v2, "token-v2") // no longer ErrInvalidated
	if want := (token.Fence{Written: v2, Invalidated: v1}); got.Fence != want {
		t.Errorf("Load Fence after a newer Save = %+v; want %+v", got.Fence, want)
	}
}

// ttl: a token expires with the TTL it was saved with, as a plain miss (not
// a malformed value, and not an invalidation even after an earlier one), and
// its version stays fenced.
func (s suite) ttl(t *testing.T) {
	_, hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	v0 := next(t, a)
	save(t, a, shared(v0, "token-v0", ""))
	if ok, err := a.Invalidate(t.Context(), v0); !ok || err != nil {
		t.Fatalf("Invalidate(%d) = %v, %v; want true", v0, ok, err)
	}
	v1 := next(t, a)
	save(t, a, token.Shared{Value: "short-lived", Version: v1, TTL: shortTTL, Lifetime: time.Second})
	got := load(t, b, v1, "short-lived")
	if got.TTL <= 0 || got.TTL > shortTTL {
		t.Errorf("Load TTL = %v; want in (0, %v]", got.TTL, shortTTL)
	}

	s.wait(shortTTL)
	deadline := time.Now().Add(shortTTL + patience)
	var err error
	for {
		got, err = b.Load(t.Context())
		if errors.Is(err, token.ErrNotFound) {
			break
		}
		switch {
		case err != nil:
			t.Fatalf("Load of an expiring token = %v; want the token or ErrNotFound", err)
		case got.TTL <= 0:
			t.Fatalf("Load returned a token with TTL %v", got.TTL)
		case time.Now().After(deadline):
			t.Fatalf("the token saved with TTL %v was still there after %v", shortTTL, shortTTL+patience)
		}
		time.Sleep(shortTTL / 20) // polling the store for the expiry
	}
	if errors.Is(err, token.ErrInvalidated) {
		t.Errorf("Load of an expired token = %v; want ErrNotFound without ErrInvalidated (version %d expired, %d was invalidated)", err, v1, v0)
	}
	if want := (token.Fence{Written: v1, Invalidated: v0}); got.Fence != want {
		t.Errorf("Load Fence after expiry = %+v; want %+v", got.Fence, want)
	}
	if err := a.Save(t.Context(), shared(v1, "late", "")); !errors.Is(err, token.ErrFenced) {
		t.Errorf("Save of the expired version %d = %v; want ErrFenced", v1, err)
	}
	if ok, err := a.Invalidate(t.Context(), v1); ok || err != nil {
		t.Errorf("Invalidate(%d) of an expired token = %v, %v; want false, nil (nothing is stored)", v1, ok, err)
	}
}

// malformed: an undecodable value is reported as such, with the fence, and
// the next Save overwrites it.
func (s suite) malformed(t *testing.T) {
	c, hs := s.handles(t, 2)
	if c.Corrupt == nil {
		t.Skip("the harness cannot write a malformed value (Credential.Corrupt is nil)")
	}
	a, b := hs[0], hs[1]
	v1 := next(t, a)
	save(t, a, shared(v1, "token-v1", accountA))
	c.Corrupt()
	got, err := b.Load(t.Context())
	if !errors.Is(err, token.ErrMalformed) {
		t.Fatalf("Load of a malformed value = %+v, %v; want ErrMalformed", got, err)
	}
	if got.Fence.Written != v1 {
		t.Errorf("Load Fence.Written with a malformed value = %d; want %d (Load sets the fence with ErrMalformed)", got.Fence.Written, v1)
	}
	v2 := next(t, b)
	save(t, b, shared(v2, "token-v2", accountA))
	load(t, a, v2, "token-v2")
}

// values: every value up to token.MaxTokenLen bytes round-trips, whatever
// its bytes; a longer one is stored or refused with ErrTokenTooLarge.
func (s suite) values(t *testing.T) {
	_, hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	var all strings.Builder
	for i := range 256 {
		all.WriteByte(byte(i))
	}
	binary := strings.Repeat(all.String(), token.MaxTokenLen/256+1)
	for _, tc := range []struct {
		name  string
		value string
	}{
		{"one byte", "x"},
		{"separators", "1|2|3|e|k|\r\n {}\"'\\%"},
		{"UTF-8", "令牌-токен-🔑"},
		{"every byte", all.String()},
		{"MaxTokenLen-1", binary[:token.MaxTokenLen-1]},
		{"MaxTokenLen", binary[:token.MaxTokenLen]},
		{"MaxTokenLen base64", strings.Repeat("A-z_0+/=", token.MaxTokenLen/8)},
	} {
		v := next(t, a)
		if err := a.Save(t.Context(), shared(v, tc.value, "")); err != nil {
			t.Errorf("%s: Save of %d bytes = %v; want it stored (any value up to MaxTokenLen)", tc.name, len(tc.value), err)
			continue
		}
		if got, err := b.Load(t.Context()); err != nil || got.Version != v || got.Value != tc.value {
			t.Errorf("%s: Load = version %d, %s, %v; want version %d, %s", tc.name, got.Version, describe(got.Value), err, v, describe(tc.value))
		}
	}

	prev := next(t, a)
	save(t, a, shared(prev, "before", ""))
	v := next(t, a)
	long := binary[:token.MaxTokenLen+1]
	switch err := a.Save(t.Context(), shared(v, long, "")); {
	case errors.Is(err, token.ErrTokenTooLarge):
		load(t, b, prev, "before") // refused: nothing written
	case err != nil:
		t.Errorf("Save of MaxTokenLen+1 bytes = %v; want it stored or ErrTokenTooLarge", err)
	default:
		load(t, b, v, long)
	}
}

// recorder records what a Watch delivers. fn never blocks.
type recorder struct {
	mu      sync.Mutex
	evs     []token.Event
	stopped bool          // stop has returned
	late    []token.Event // delivered after stop returned
	signal  chan struct{} // closed and replaced with every event
}

func newRecorder() *recorder { return &recorder{signal: make(chan struct{})} }

func (r *recorder) fn(ev token.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		r.late = append(r.late, ev)
	}
	r.evs = append(r.evs, ev)
	close(r.signal)
	r.signal = make(chan struct{})
}

func (r *recorder) markStopped() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
}

func (r *recorder) lateEvents() events {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append(events(nil), r.late...)
}

// events prints events readably, for failure messages.
type events []token.Event

func (es events) String() string {
	names := map[token.EventKind]string{token.Refreshed: "Refreshed", token.Invalidated: "Invalidated", token.Resync: "Resync", token.Unsubscribed: "Unsubscribed"}
	var b strings.Builder
	b.WriteString("[")
	for i, ev := range es {
		if i > 0 {
			b.WriteString(" ")
		}
		name, ok := names[ev.Kind]
		if !ok {
			name = fmt.Sprintf("EventKind(%d)", int(ev.Kind))
		}
		fmt.Fprintf(&b, "%s{%d}", name, ev.Version)
	}
	b.WriteString("]")
	return b.String()
}

func (r *recorder) all() events {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append(events(nil), r.evs...)
}

// await reports whether an event satisfying ok arrives (or arrived) within d.
func (r *recorder) await(d time.Duration, ok func(token.Event) bool) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	seen := 0
	for {
		r.mu.Lock()
		for _, ev := range r.evs[seen:] {
			if ok(ev) {
				r.mu.Unlock()
				return true
			}
		}
		seen = len(r.evs)
		sig := r.signal
		r.mu.Unlock()
		select {
		case <-sig:
		case <-timer.C:
			return false
		}
	}
}

func is(kind token.EventKind, v int64) func(token.Event) bool {
	return func(ev token.Event) bool { return ev.Kind == kind && ev.Version == v }
}

// awaitLive waits until every recorder's watcher is live: it has had a
// Resync, or the event of a probe Save made through w after Watch returned.
// Events published before a subscription is confirmed are lost, so probes
// are repeated until one arrives.
func awaitLive(t *testing.T, w token.Store, rs ...*recorder) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for _, r := range rs {
		for {
			v := next(t, w)
			save(t, w, shared(v, "probe", ""))
			if r.await(50*time.Millisecond, func(ev token.Event) bool {
				return ev.Kind == token.Resync || ev.Kind == token.Refreshed && ev.Version >= v
			}) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a watcher got neither Resync nor the event of a later Save within %v (events: %v)", patience, r.all())
			}
		}
	}
}

// watch: watchers on any instance, the writer's included, hear of every
// Save and Invalidate; after stop returns, a watcher hears nothing more.
func (s suite) watch(t *testing.T) {
	_, hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	onA, onB, onB2 := newRecorder(), newRecorder(), newRecorder()
	t.Cleanup(a.Watch(onA.fn))
	// B's first watcher is stopped below, once: the contract does not say
	// stop may be called twice.
	stopB := sync.OnceFunc(b.Watch(onB.fn))
	t.Cleanup(stopB)
	t.Cleanup(b.Watch(onB2.fn))
	awaitLive(t, a, onA, onB, onB2)
	watchers := []struct {
		name string
		r    *recorder
	}{{"A (the writer)", onA}, {"B", onB}, {"B's second watcher", onB2}}

	v := next(t, a)
	save(t, a, shared(v, "token", ""))
	for _, w := range watchers {
		if !w.r.await(patience, is(token.Refreshed, v)) {
			t.Errorf("watcher on %s got no Refreshed{%d} after A's Save (events: %v)", w.name, v, w.r.all())
		}
	}
	if ok, err := a.Invalidate(t.Context(), v); !ok || err != nil {
		t.Fatalf("Invalidate(%d) = %v, %v; want true, nil", v, ok, err)
	}
	for _, w := range watchers {
		if !w.r.await(patience, is(token.Invalidated, v)) {
			t.Errorf("watcher on %s got no Invalidated{%d} after A's Invalidate (events: %v)", w.name, v, w.r.all())
		}
	}

	t.Run("Stop", func(t *testing.T) {
		stopB()
		onB.markStopped()
		// B's second watcher, on the same instance, shows when the events
		// that follow have been delivered there. (The contract does not
		// say whether a call in flight when stop is called ends before it
		// returns; none is in flight here.)
		v := next(t, a)
		save(t, a, shared(v, "after stop", ""))
		if ok, err := a.Invalidate(t.Context(), v); !ok || err != nil {
			t.Fatalf("Invalidate(%d) = %v, %v; want true, nil", v, ok, err)
		}
		if !onB2.await(patience, is(token.Invalidated, v)) {
			t.Fatalf("B's remaining watcher got no Invalidated{%d} (events: %v)", v, onB2.all())
		}
		if late := onB.lateEvents(); len(late) > 0 {
			t.Errorf("a stopped watcher was called with %v after stop returned", late)
		}
	})
}

// watchOther: a watcher hears only its own credential's events.
func (s suite) watchOther(t *testing.T) {
	_, hs := s.handles(t, 1)
	_, others := s.handles(t, 1)
	mine, other := hs[0], others[0]
	r := newRecorder()
	t.Cleanup(mine.Watch(r.fn))
	awaitLive(t, mine, r)

	// Versions of two credentials may coincide, so only the Invalidated
	// event is told apart: nothing is invalidated on mine.
	ov := next(t, other)
	save(t, other, shared(ov, "other", ""))
	if ok, err := other.Invalidate(t.Context(), ov); !ok || err != nil {
		t.Fatalf("Invalidate(%d) on the other credential = %v, %v", ov, ok, err)
	}
	v := next(t, mine)
	save(t, mine, shared(v, "mine", ""))
	if !r.await(patience, is(token.Refreshed, v)) {
		t.Fatalf("no Refreshed{%d} (events: %v)", v, r.all())
	}
	for _, ev := range r.all() {
		if ev.Kind == token.Invalidated {
			t.Errorf("watcher got %v: an event of another credential (nothing was invalidated on its own)", events{ev})
		}
	}
}

// backoff: the shared backoff record round-trips between instances, and a
// successful Save or a zero SaveBackoff clears it.
func (s suite) backoff(t *testing.T) {
	_, hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	rec := token.SharedBackoff{Failures: 3, Remaining: time.Minute, Class: token.ClassPermanent, Code: "40125", Identity: fetcherFP}
	loadBackoff := func(st token.Store) token.SharedBackoff {
		t.Helper()
		got, err := st.LoadBackoff(t.Context())
		if err != nil {
			t.Fatalf("LoadBackoff: %v", err)
		}
		return got
	}
	for _, clear := range []struct {
		name string
		do   func()
	}{
		{"a successful Save", func() { save(t, a, shared(next(t, a), "token", "")) }},
		{"SaveBackoff of the zero SharedBackoff", func() {
			if err := a.SaveBackoff(t.Context(), token.SharedBackoff{}); err != nil {
				t.Fatalf("SaveBackoff(zero): %v", err)
			}
		}},
	} {
		if err := a.SaveBackoff(t.Context(), rec); err != nil {
			t.Fatalf("SaveBackoff: %v", err)
		}
		got := loadBackoff(b)
		// Remaining counts down on the store's clock.
		if got.Remaining <= rec.Remaining/2 || got.Remaining > rec.Remaining {
			t.Errorf("LoadBackoff Remaining = %v; want at most the saved %v and not far below", got.Remaining, rec.Remaining)
		}
		got.Remaining = rec.Remaining
		if got != rec {
			t.Errorf("LoadBackoff = %+v; want %+v", got, rec)
		}
		clear.do()
		if got := loadBackoff(b); got != (token.SharedBackoff{}) {
			t.Errorf("LoadBackoff after %s = %+v; want the zero SharedBackoff", clear.name, got)
		}
	}
}

// lockers returns the handles as Lockers, skipping the test if they are not.
func lockers(t *testing.T, hs []token.Store) []token.Locker {
	t.Helper()
	ls := make([]token.Locker, len(hs))
	for i, h := range hs {
		l, ok := h.(token.Locker)
		if !ok {
			t.Skipf("the store (%T) is not a token.Locker", h)
		}
		ls[i] = l
	}
	return ls
}

func tryLock(t *testing.T, l token.Locker, ctx context.Context) token.Held {
	t.Helper()
	h, err := l.TryLock(ctx)
	if err != nil {
		t.Fatalf("TryLock of a free lock: %v", err)
	}
	t.Cleanup(func() { _ = h.Release(context.Background()) })
	return h
}

func locked(t *testing.T, l token.Locker, who string) {
	t.Helper()
	h, err := l.TryLock(t.Context())
	if !errors.Is(err, token.ErrLocked) {
		if err == nil {
			_ = h.Release(t.Context())
		}
		t.Errorf("TryLock on %s while another holds the lock = %v; want ErrLocked", who, err)
	}
}

// lock: one holder at a time, across instances and within one (two
// Sources may share a handle); Release frees it, ends the Held's context,
// and, called again, does not free a later holder's lock.
func (s suite) lock(t *testing.T) {
	_, hs := s.handles(t, 3)
	ls := lockers(t, hs)
	a, b, c := ls[0], ls[1], ls[2]
	ha := tryLock(t, a, t.Context())
	if err := ha.Context().Err(); err != nil {
		t.Fatalf("Held.Context() of a held lock is done: %v", context.Cause(ha.Context()))
	}
	locked(t, b, "another instance")
	locked(t, a, "the holder's instance")
	if err := ha.Release(t.Context()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case <-ha.Context().Done():
	default:
		t.Error("Held.Context() is not done after Release")
	}
	hb := tryLock(t, b, t.Context())
	// Safe to call more than once: a second Release must not free B's lock.
	_ = ha.Release(t.Context())
	locked(t, c, "a third instance after a repeated Release")
	if err := hb.Context().Err(); err != nil {
		t.Errorf("B's Held.Context() is done after A released again: %v", context.Cause(hb.Context()))
	}
}

// lockExpires: a lock whose holder vanished without Release lapses, so
// that a crashed instance does not block every refresh.
func (s suite) lockExpires(t *testing.T) {
	if s.h.LockTTL <= 0 {
		t.Skip("the harness sets no LockTTL: locks are taken not to expire")
	}
	_, hs := s.handles(t, 3)
	ls := lockers(t, hs)
	a, b, c := ls[0], ls[1], ls[2]
	ctx, vanish := context.WithCancel(t.Context())
	ha := tryLock(t, a, ctx)
	locked(t, b, "another instance")
	vanish()
	s.wait(s.h.LockTTL)
	start := time.Now()
	var hb token.Held
	for {
		h, err := b.TryLock(t.Context())
		if err == nil {
			hb = h
			t.Cleanup(func() { _ = hb.Release(context.Background()) })
			break
		}
		if !errors.Is(err, token.ErrLocked) {
			t.Fatalf("TryLock: %v", err)
		}
		if time.Since(start) > s.h.LockTTL+patience {
			t.Fatalf("the lock of a vanished holder was still held %v later (LockTTL %v)", time.Since(start), s.h.LockTTL)
		}
		time.Sleep(s.h.LockTTL / 20) // polling the store for the expiry
	}
	// The vanished holder coming back to release must not free B's lock.
	_ = ha.Release(t.Context())
	locked(t, c, "a third instance after the old holder's Release")
}

// concurrent: many instances refresh at once; every write is either fenced
// by a newer one or succeeds, and the newest version ends up stored.
func (s suite) concurrent(t *testing.T) {
	const instances, perInstance = 4, 4
	_, hs := s.handles(t, instances)
	type result struct {
		v   int64
		err error
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	for _, h := range hs {
		for range perInstance {
			wg.Go(func() {
				v, err := h.NextVersion(t.Context())
				if err == nil {
					err = h.Save(t.Context(), shared(v, fmt.Sprint("token-", v), accountA))
				}
				mu.Lock()
				results = append(results, result{v, err})
				mu.Unlock()
			})
		}
	}
	wg.Wait()

	seen := map[int64]bool{}
	var newest, newestSaved int64
	for _, r := range results {
		if r.err != nil && !errors.Is(r.err, token.ErrFenced) {
			t.Fatalf("NextVersion or Save of version %d: %v; want success or ErrFenced", r.v, r.err)
		}
		if seen[r.v] {
			t.Errorf("NextVersion returned %d twice", r.v)
		}
		seen[r.v] = true
		newest = max(newest, r.v)
		if r.err == nil {
			newestSaved = max(newestSaved, r.v)
		}
	}
	for _, r := range results {
		// Fenced means a token with a newer version was saved.
		if r.err != nil && r.v > newestSaved {
			t.Errorf("Save of version %d was fenced, but no newer version was saved (newest saved: %d)", r.v, newestSaved)
		}
	}
	if newestSaved != newest {
		t.Errorf("the newest version %d was not saved (newest saved: %d): nothing newer could fence it", newest, newestSaved)
	}
	got := load(t, hs[0], newest, fmt.Sprint("token-", newest))
	if got.Fence.Written != newest {
		t.Errorf("Fence.Written = %d; want %d", got.Fence.Written, newest)
	}
}
