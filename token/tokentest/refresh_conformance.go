package tokentest

// A conformance suite for token.RefreshStore implementations, beside
// TestStore: every property it checks is one that token/refresh.go
// documents, or that a Source redeeming rotating refresh state relies on.

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
)

// RefreshHarness tells TestRefreshStore how to make the refresh stores it
// checks. Only New is required.
type RefreshHarness struct {
	// New makes a fresh credential, with no refresh state, that no other
	// test uses. TestRefreshStore calls it once or twice in each subtest,
	// from the subtest's goroutine, with the subtest's t: release what it
	// makes with t.Cleanup.
	New func(t *testing.T) RefreshCredential

	// Advance, if set, makes d pass at once on every clock the store could
	// expire state by (miniredis's FastForward). TestRefreshStore uses it to
	// check that refresh state never expires; if nil, that subtest is
	// skipped.
	Advance func(d time.Duration)
}

// RefreshCredential is one credential of the refresh store under test, as a
// RefreshHarness makes it.
type RefreshCredential struct {
	// Open returns a new handle on the credential, as another instance or
	// process would open it: its own connection (pool), for a store that
	// has them. Handles of one credential see each other's writes at once;
	// a store without connections may return the same value every time.
	// Required.
	Open func() token.RefreshStore
}

// TestRefreshStore checks that the refresh stores h makes keep the contract
// of token.RefreshStore, as a Source redeeming rotating refresh state relies
// on it. Run it with -race. It requires, of any handles on one credential:
//
//   - Empty: a credential never seeded has no state: LoadRefresh returns an
//     error wrapping token.ErrNoRefreshState (and the zero RefreshState);
//     CommitRefresh of any generation returns an error wrapping
//     token.ErrFenced and stores nothing; DeleteRefresh returns nil or an
//     error wrapping ErrNoRefreshState.
//   - Seed: SeedRefresh returns a positive generation (so that the zero
//     RefreshState never matches a stored one), and LoadRefresh on every
//     handle returns the value seeded with that generation.
//   - Commit: CommitRefresh(g, next) with g stored stores next as g+1; with
//     any other generation (older: a refresher that lost its lock; newer:
//     never stored) it returns an error wrapping ErrFenced, changes
//     nothing, and the error does not contain next (a secret).
//   - ConcurrentCommits: of many commits of one generation from goroutines
//     on several handles, exactly one succeeds and the others are fenced,
//     round after round; a LoadRefresh concurrent with them returns a
//     value and generation that were committed together.
//   - Reseed: SeedRefresh over existing state stores its value under a
//     generation greater than any stored before, so that a commit against
//     an older generation is fenced, whether it comes after the seed or
//     races with it (then either it is fenced or the seed follows it).
//   - Delete: after DeleteRefresh, LoadRefresh returns ErrNoRefreshState,
//     a commit against the deleted generation is fenced (also when racing
//     the delete: no state is left either way), a second DeleteRefresh
//     returns nil or ErrNoRefreshState, and a SeedRefresh after it returns
//     a generation greater than any stored before the delete.
//   - Values: any value of 1 to token.MaxTokenLen bytes (NUL, invalid
//     UTF-8, separators) round-trips byte for byte, through SeedRefresh
//     and through CommitRefresh.
//   - NoExpiry: state outlives any TTL (a year on the harness's clock);
//     skipped without RefreshHarness.Advance.
//   - Isolation: credentials do not share state.
//   - SaveRotated, for a handle that is also a token.Store and a
//     token.RotationSaver: with the stored generation it commits the state
//     and saves the token; with another generation it writes neither (the
//     token stays the older one) and returns ErrFenced; with the stored
//     generation and a token version that is not newer, it commits the
//     state and returns ErrFenced. Errors never contain the state.
//
// What token/refresh.go leaves open, TestRefreshStore does not check: the
// empty value (a Source neither seeds nor commits one), values longer than
// token.MaxTokenLen, whether CommitRefresh on a credential without state
// also wraps ErrNoRefreshState, which generation a seed picks beyond being
// greater than every one before (not necessarily the previous one plus
// one), context cancellation, and what a store does while unreachable.
//
// The subtests run one after another, so an Advance may move a clock that
// all of them share.
func TestRefreshStore(t *testing.T, h RefreshHarness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("tokentest: RefreshHarness.New is nil")
	}
	s := refreshSuite{h}
	for _, st := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"Empty", s.empty},
		{"Seed", s.seed},
		{"Commit", s.commit},
		{"ConcurrentCommits", s.concurrentCommits},
		{"Reseed", s.reseed},
		{"Delete", s.delete},
		{"Values", s.values},
		{"NoExpiry", s.noExpiry},
		{"Isolation", s.isolation},
		{"SaveRotated", s.saveRotated},
	} {
		t.Run(st.name, st.run)
	}
}

type refreshSuite struct{ h RefreshHarness }

// handles makes a fresh credential and opens n handles on it.
func (s refreshSuite) handles(t *testing.T, n int) []token.RefreshStore {
	t.Helper()
	c := s.h.New(t)
	if c.Open == nil {
		t.Fatal("tokentest: RefreshCredential.Open is nil")
	}
	hs := make([]token.RefreshStore, n)
	for i := range hs {
		if hs[i] = c.Open(); hs[i] == nil {
			t.Fatal("tokentest: RefreshCredential.Open returned nil")
		}
	}
	return hs
}

// seedOK seeds value and checks the generation is positive and greater
// than after (the greatest generation the credential held before).
func (s refreshSuite) seedOK(t *testing.T, rs token.RefreshStore, value string, after int64) int64 {
	t.Helper()
	g, err := rs.SeedRefresh(t.Context(), value)
	if err != nil {
		t.Fatalf("SeedRefresh(%s): %v", describe(value), err)
	}
	if g <= 0 || g <= after {
		t.Fatalf("SeedRefresh = generation %d; want one greater than 0 and than every generation stored before (%d)", g, after)
	}
	return g
}

// loadOK checks the stored state is value, generation g.
func (s refreshSuite) loadOK(t *testing.T, rs token.RefreshStore, value string, g int64) {
	t.Helper()
	got, err := rs.LoadRefresh(t.Context())
	if err != nil {
		t.Fatalf("LoadRefresh: %v; want %s, generation %d", err, describe(value), g)
	}
	if got.Generation != g || got.Value != value {
		t.Fatalf("LoadRefresh = %s, generation %d; want %s, generation %d", describe(got.Value), got.Generation, describe(value), g)
	}
}

// commitOK commits next against g.
func (s refreshSuite) commitOK(t *testing.T, rs token.RefreshStore, g int64, next string) {
	t.Helper()
	if err := rs.CommitRefresh(t.Context(), g, next); err != nil {
		t.Fatalf("CommitRefresh(%d, %s) with generation %d stored: %v", g, describe(next), g, err)
	}
}

// fenced checks that a commit of next against g is refused with ErrFenced,
// and that the error does not reveal next.
func (s refreshSuite) fenced(t *testing.T, rs token.RefreshStore, g int64, next, why string) {
	t.Helper()
	err := rs.CommitRefresh(t.Context(), g, next)
	if !errors.Is(err, token.ErrFenced) {
		t.Errorf("CommitRefresh(%d) %s = %v; want ErrFenced", g, why, err)
		return
	}
	if strings.Contains(err.Error(), next) {
		t.Errorf("the error of a fenced CommitRefresh holds the refresh value: %v", err)
	}
}

// none checks the credential has no state.
func (s refreshSuite) none(t *testing.T, rs token.RefreshStore, when string) {
	t.Helper()
	got, err := rs.LoadRefresh(t.Context())
	if !errors.Is(err, token.ErrNoRefreshState) {
		t.Fatalf("LoadRefresh %s = %s, generation %d, %v; want ErrNoRefreshState", when, describe(got.Value), got.Generation, err)
	}
	if got != (token.RefreshState{}) {
		t.Errorf("LoadRefresh %s returned %s, generation %d with ErrNoRefreshState; want the zero RefreshState", when, describe(got.Value), got.Generation)
	}
}

// deleteOK deletes the state; deleting none may return ErrNoRefreshState.
func (s refreshSuite) deleteOK(t *testing.T, rs token.RefreshStore, when string) {
	t.Helper()
	if err := rs.DeleteRefresh(t.Context()); err != nil && !errors.Is(err, token.ErrNoRefreshState) {
		t.Fatalf("DeleteRefresh %s: %v; want nil (or ErrNoRefreshState if none was stored)", when, err)
	}
}

// empty: a fresh credential has no state, and no commit can create one.
func (s refreshSuite) empty(t *testing.T) {
	hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	s.none(t, a, "of a fresh credential")
	for _, g := range []int64{0, 1, -1} {
		s.fenced(t, a, g, "secret-commit-without-seed", "on a credential never seeded")
	}
	s.none(t, b, "after commits on a credential never seeded")
	s.deleteOK(t, b, "of a credential never seeded")
	s.none(t, a, "after DeleteRefresh of nothing")
}

// seed: the seeded state is what every handle loads.
func (s refreshSuite) seed(t *testing.T) {
	hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	g := s.seedOK(t, a, "seed-1", 0)
	s.loadOK(t, b, "seed-1", g)
	s.loadOK(t, a, "seed-1", g)
}

// commit: a commit of the stored generation replaces the state with the
// next one; any other generation is fenced and changes nothing.
func (s refreshSuite) commit(t *testing.T) {
	hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	g := s.seedOK(t, a, "refresh-1", 0)
	s.commitOK(t, b, g, "refresh-2")
	s.loadOK(t, a, "refresh-2", g+1)

	s.fenced(t, a, g, "secret-stale-commit", "of the generation just replaced")
	s.fenced(t, a, g-1, "secret-older-commit", "of an older generation")
	s.fenced(t, b, g+2, "secret-future-commit", "of a generation never stored")
	s.loadOK(t, b, "refresh-2", g+1) // the refused commits changed nothing

	s.commitOK(t, a, g+1, "refresh-3")
	s.loadOK(t, b, "refresh-3", g+2)
	s.fenced(t, b, g+1, "secret-stale-commit-2", "of the generation just replaced")
	s.loadOK(t, a, "refresh-3", g+2)
}

// concurrentCommits: instances that all redeemed the same generation race
// to commit; exactly one wins each round, and readers never see a value
// with another commit's generation.
func (s refreshSuite) concurrentCommits(t *testing.T) {
	const instances, perInstance, rounds = 4, 8, 5
	hs := s.handles(t, instances)
	g := s.seedOK(t, hs[0], "round-0", 0)
	stored := map[int64]string{g: "round-0"} // generation → value committed
	observed := s.watchLoads(t, hs)
	defer observed.stop() // also when a check below fails the test
	for round := 1; round <= rounds; round++ {
		winner := s.commitRound(t, hs, g, round, perInstance)
		g++
		observed.mu.Lock()
		stored[g] = winner
		observed.mu.Unlock()
		for _, h := range hs {
			s.loadOK(t, h, winner, g)
		}
	}
	observed.stop()
	for gen, values := range observed.seen {
		for v := range values {
			if stored[gen] != v {
				t.Errorf("a concurrent LoadRefresh returned %s with generation %d, which holds %s", describe(v), gen, describe(stored[gen]))
			}
		}
	}
}

// loads is what readers saw while commits raced.
type loads struct {
	mu   sync.Mutex                // guards seen
	seen map[int64]map[string]bool // generation → values loaded
	stop func()                    // stops the readers and waits for them
}

// watchLoads loads the state from every handle in a loop until stop.
func (s refreshSuite) watchLoads(t *testing.T, hs []token.RefreshStore) *loads {
	l := &loads{seen: map[int64]map[string]bool{}}
	done := make(chan struct{})
	var readers sync.WaitGroup
	l.stop = sync.OnceFunc(func() {
		close(done)
		readers.Wait()
	})
	for _, h := range hs {
		readers.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				st, err := h.LoadRefresh(t.Context())
				if err != nil {
					t.Errorf("LoadRefresh during concurrent commits: %v", err)
					return
				}
				l.mu.Lock()
				if l.seen[st.Generation] == nil {
					l.seen[st.Generation] = map[string]bool{}
				}
				l.seen[st.Generation][st.Value] = true
				l.mu.Unlock()
			}
		})
	}
	return l
}

// commitRound has perInstance goroutines per handle commit generation g at
// once, and returns the one value that won.
func (s refreshSuite) commitRound(t *testing.T, hs []token.RefreshStore, g int64, round, perInstance int) string {
	start := make(chan struct{})
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex // guards winners and others
		winners []string
		others  []error
	)
	for i, h := range hs {
		for j := range perInstance {
			value := fmt.Sprintf("round-%d-instance-%d-goroutine-%d", round, i, j)
			wg.Go(func() {
				<-start
				err := h.CommitRefresh(t.Context(), g, value)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					winners = append(winners, value)
				case !errors.Is(err, token.ErrFenced):
					others = append(others, err)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	for _, err := range others {
		t.Errorf("round %d: CommitRefresh(%d) = %v; want nil or ErrFenced", round, g, err)
	}
	if len(winners) != 1 {
		t.Fatalf("round %d: %d of %d commits of generation %d succeeded (%v); want exactly one",
			round, len(winners), len(hs)*perInstance, g, winners)
	}
	return winners[0]
}

// reseed: a new authorization replaces the state under a generation
// greater than any before, fencing refreshers of the old one.
func (s refreshSuite) reseed(t *testing.T) {
	hs := s.handles(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	g := s.seedOK(t, a, "first", 0)
	for i := range 3 {
		s.commitOK(t, b, g+int64(i), fmt.Sprint("first-", i+1))
	}
	newest := g + 3
	s.loadOK(t, c, "first-3", newest)

	g2 := s.seedOK(t, c, "second", newest)
	s.loadOK(t, a, "second", g2)
	for _, old := range []int64{g, newest} {
		s.fenced(t, b, old, "secret-commit-of-old-authorization", "of the authorization a seed replaced")
	}
	s.loadOK(t, a, "second", g2)

	s.seedRacingCommits(t, hs, g2)
}

// seedRacingCommits: a seed racing refreshers that redeemed generation g2,
// the current state: each commit is fenced or precedes the seed; the seed's
// state stays.
func (s refreshSuite) seedRacingCommits(t *testing.T, hs []token.RefreshStore, g2 int64) {
	const committers = 12
	start := make(chan struct{})
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex // guards won, seedGen and seedErr
		won     int
		seedGen int64
		seedErr error
	)
	for i := range committers {
		h := hs[i%len(hs)]
		wg.Go(func() {
			<-start
			err := h.CommitRefresh(t.Context(), g2, fmt.Sprint("racing-", i))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case !errors.Is(err, token.ErrFenced):
				t.Errorf("CommitRefresh(%d) racing a seed = %v; want nil or ErrFenced", g2, err)
			}
		})
	}
	wg.Go(func() {
		<-start
		gen, err := hs[0].SeedRefresh(t.Context(), "third")
		mu.Lock()
		seedGen, seedErr = gen, err
		mu.Unlock()
	})
	close(start)
	wg.Wait()
	if seedErr != nil {
		t.Fatalf("SeedRefresh racing commits: %v", seedErr)
	}
	switch {
	case won > 1:
		t.Errorf("%d commits of generation %d succeeded; want at most one", won, g2)
	case won == 1 && seedGen <= g2+1:
		t.Errorf("SeedRefresh after a commit stored generation %d = %d; want a greater one", g2+1, seedGen)
	case seedGen <= g2:
		t.Errorf("SeedRefresh over generation %d = %d; want a greater one", g2, seedGen)
	}
	s.loadOK(t, hs[1], "third", seedGen)
}

// delete: deleting the state (a revoked authorization) leaves none, fences
// commits of the deleted generation, and a later seed is newer than all.
func (s refreshSuite) delete(t *testing.T) {
	hs := s.handles(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	g := s.seedOK(t, a, "doomed", 0)
	s.commitOK(t, b, g, "doomed-2")
	g++
	s.deleteOK(t, c, "of stored state")
	s.none(t, a, "after DeleteRefresh")
	s.none(t, b, "after DeleteRefresh")
	s.fenced(t, b, g, "secret-commit-after-delete", "of the deleted generation")
	s.fenced(t, b, g+1, "secret-commit-after-delete-2", "after DeleteRefresh")
	s.none(t, c, "after commits of the deleted generation")
	s.deleteOK(t, a, "a second time")
	s.none(t, b, "after a second DeleteRefresh")

	g2 := s.seedOK(t, b, "reauthorized", g)
	s.loadOK(t, c, "reauthorized", g2)
	s.fenced(t, a, g, "secret-commit-of-deleted-generation", "of the generation deleted before the seed")
	s.loadOK(t, c, "reauthorized", g2)

	// A delete racing refreshers: whichever order, no state is left.
	const committers = 12
	start := make(chan struct{})
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		won int64
	)
	for i := range committers {
		h := hs[i%len(hs)]
		wg.Go(func() {
			<-start
			switch err := h.CommitRefresh(t.Context(), g2, fmt.Sprint("racing-", i)); {
			case err == nil:
				mu.Lock()
				won++
				mu.Unlock()
			case !errors.Is(err, token.ErrFenced):
				t.Errorf("CommitRefresh(%d) racing a delete = %v; want nil or ErrFenced", g2, err)
			}
		})
	}
	wg.Go(func() {
		<-start
		if err := c.DeleteRefresh(t.Context()); err != nil {
			t.Errorf("DeleteRefresh racing commits: %v", err)
		}
	})
	close(start)
	wg.Wait()
	if won > 1 {
		t.Errorf("%d commits of generation %d succeeded; want at most one", won, g2)
	}
	s.none(t, a, "after a DeleteRefresh that raced commits")
	g3 := s.seedOK(t, a, "reauthorized-again", g2+won)
	s.loadOK(t, b, "reauthorized-again", g3)
}

// values: every value up to token.MaxTokenLen bytes round-trips, whatever
// its bytes, whether seeded or committed.
func (s refreshSuite) values(t *testing.T) {
	hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	var all strings.Builder
	for i := range 256 {
		all.WriteByte(byte(i))
	}
	binary := strings.Repeat(all.String(), token.MaxTokenLen/256+1)
	var g int64
	for _, tc := range []struct {
		name  string
		value string
	}{
		{"one byte", "x"},
		{"NUL", "\x00"},
		{"separators", "1|2|3|e|k|\r\n {}\"'\\%;--"},
		{"UTF-8", "令牌-токен-🔑"},
		{"invalid UTF-8", "\xff\xfe\xc3\x28"},
		{"every byte", all.String()},
		{"MaxTokenLen-1", binary[1:token.MaxTokenLen]},
		{"MaxTokenLen", binary[:token.MaxTokenLen]},
		{"MaxTokenLen base64", strings.Repeat("A-z_0+/=", token.MaxTokenLen/8)},
	} {
		g = s.seedOK(t, a, tc.value, g)
		got, err := b.LoadRefresh(t.Context())
		if err != nil || got.Generation != g || got.Value != tc.value {
			t.Errorf("%s: LoadRefresh after SeedRefresh = %s, generation %d, %v; want %s, generation %d",
				tc.name, describe(got.Value), got.Generation, err, describe(tc.value), g)
		}
		next := tc.value[1:] + tc.value[:1] // as long, different bytes
		if err := b.CommitRefresh(t.Context(), g, next); err != nil {
			t.Errorf("%s: CommitRefresh of %d bytes: %v", tc.name, len(next), err)
			continue
		}
		g++
		got, err = a.LoadRefresh(t.Context())
		if err != nil || got.Generation != g || got.Value != next {
			t.Errorf("%s: LoadRefresh after CommitRefresh = %s, generation %d, %v; want %s, generation %d",
				tc.name, describe(got.Value), got.Generation, err, describe(next), g)
		}
	}
}

// noExpiry: refresh state is kept without a TTL.
func (s refreshSuite) noExpiry(t *testing.T) {
	if s.h.Advance == nil {
		t.Skip("the harness cannot make time pass (RefreshHarness.Advance is nil)")
	}
	hs := s.handles(t, 2)
	a, b := hs[0], hs[1]
	g := s.seedOK(t, a, "long-lived", 0)
	const year = 366 * 24 * time.Hour
	s.h.Advance(year)
	s.loadOK(t, b, "long-lived", g)
	s.commitOK(t, b, g, "long-lived-2")
	s.h.Advance(year)
	s.loadOK(t, a, "long-lived-2", g+1)
}

// isolation: two credentials keep their own states.
func (s refreshSuite) isolation(t *testing.T) {
	one := s.handles(t, 1)[0]
	two := s.handles(t, 1)[0]
	g1 := s.seedOK(t, one, "one", 0)
	s.none(t, two, "of another credential after a seed")
	g2 := s.seedOK(t, two, "two", 0)
	s.loadOK(t, one, "one", g1)
	s.commitOK(t, one, g1, "one-2")
	s.loadOK(t, two, "two", g2)
	s.deleteOK(t, two, "of the other credential")
	s.loadOK(t, one, "one-2", g1+1)
}

// rotationHandle is a handle that keeps tokens and refresh state and saves
// both in one step.
type rotationHandle interface {
	token.Store
	token.RefreshStore
	token.RotationSaver
}

// saveRotated: the refresh state and the token are replaced together, and
// a stale generation writes neither.
func (s refreshSuite) saveRotated(t *testing.T) {
	hs := s.handles(t, 2)
	a, ok := hs[0].(rotationHandle)
	if !ok {
		t.Skip("not a token.RotationSaver")
	}
	b := hs[1]
	ctx := t.Context()
	g := s.seedOK(t, a, "refresh-1", 0)
	shared := func(value string) token.Shared {
		v, err := a.NextVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return token.Shared{Value: value, Version: v, TTL: time.Minute, Lifetime: time.Minute}
	}
	first := shared("token-1")
	if err := a.SaveRotated(ctx, first, g, "refresh-2"); err != nil {
		t.Fatalf("SaveRotated of the stored generation: %v", err)
	}
	s.loadOK(t, b, "refresh-2", g+1)
	s.tokenIs(t, a, first.Version, "after SaveRotated")

	err := a.SaveRotated(ctx, shared("token-stale"), g, "secret-stale-rotation")
	s.fencedErr(t, err, "secret-stale-rotation", "SaveRotated of a replaced generation")
	s.loadOK(t, b, "refresh-2", g+1)
	s.tokenIs(t, a, first.Version, "after a SaveRotated of a replaced generation")

	older := first
	older.Value = "token-older"
	err = a.SaveRotated(ctx, older, g+1, "refresh-3")
	s.fencedErr(t, err, "refresh-3", "SaveRotated of a token that is not newer")
	s.loadOK(t, b, "refresh-3", g+2)
	s.tokenIs(t, a, first.Version, "after a fenced token")
}

// tokenIs checks that st holds the token of version v.
func (s refreshSuite) tokenIs(t *testing.T, st token.Store, v int64, when string) {
	t.Helper()
	sh, err := st.Load(t.Context())
	if err != nil || sh.Version != v {
		t.Errorf("%s: token version %d (%v), want %d", when, sh.Version, err, v)
	}
}

// fencedErr checks that err wraps ErrFenced and does not contain secret.
func (s refreshSuite) fencedErr(t *testing.T, err error, secret, what string) {
	t.Helper()
	if !errors.Is(err, token.ErrFenced) {
		t.Errorf("%s: %v, want ErrFenced", what, err)
	}
	if err != nil && strings.Contains(err.Error(), secret) {
		t.Errorf("%s: the error contains the refresh state: %v", what, err)
	}
}
