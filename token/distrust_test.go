package token_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// hammer calls Token from g goroutines, n times each, and returns the first
// error or a token the upstream does not accept.
func hammer(s *token.Source, up *tokentest.Upstream, g, n int) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range g {
		wg.Go(func() {
			for range n {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				tok, err := s.Token(ctx)
				cancel()
				if err == nil && !up.Valid(tok.Value) {
					err = errors.New("handed out a token the upstream does not accept")
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// TestForgedEventsFetchNothing: an event announcing a version the store has
// not written, or an invalidation the store has not made, is clamped to the
// store's fence at the next read and logged: it causes no fetch, and Token
// keeps answering. Before the fix one such event made every Source fetch
// about 48 times a second, forever.
func TestForgedEventsFetchNothing(t *testing.T) {
	const huge = int64(1) << 62
	cases := []struct {
		name string
		ev   func(current int64) token.Event
	}{
		{"refreshed, huge version", func(int64) token.Event { return token.Event{Kind: token.Refreshed, Version: huge} }},
		{"invalidated, huge version", func(int64) token.Event { return token.Event{Kind: token.Invalidated, Version: huge} }},
		{"invalidated, current version", func(v int64) token.Event { return token.Event{Kind: token.Invalidated, Version: v} }},
		{"refreshed, next version", func(v int64) token.Event { return token.Event{Kind: token.Refreshed, Version: v + 1} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := tokentest.New(time.Hour)
			st := tokentest.NewStore()
			o, logs := logged()
			var srcs []*token.Source
			for range 3 {
				srcs = append(srcs, newSource(t, up, st, o))
			}
			for _, s := range srcs {
				if err := hammer(s, up, 1, 1); err != nil {
					t.Fatal(err)
				}
			}
			sh, err := st.Load(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for range 3 { // repeated: the warning is rate-limited, the clamp is not
				st.Notify(tc.ev(sh.Version))
				for _, s := range srcs {
					if err := hammer(s, up, 8, 50); err != nil {
						t.Fatalf("Token after a forged event: %v", err)
					}
				}
			}
			if n := up.Calls(); n != 1 {
				t.Errorf("upstream calls = %d, want 1: a forged event caused fetches", n)
			}
			if n := logs.Count("WARN", "does not confirm"); n != len(srcs) {
				t.Errorf("%d warnings about the forged event, want one per Source (%d); logs:\n%s", n, len(srcs), logs.String())
			}
		})
	}
}

// gatedStore delays the reply of a Load that has read the store, so that a
// test can write and announce a newer token in between.
type gatedStore struct {
	*tokentest.Store
	mu   sync.Mutex
	gate chan chan struct{} // a Load sends its release channel here, if set
}

func (g *gatedStore) Load(ctx context.Context) (token.Shared, error) {
	sh, err := g.Store.Load(ctx)
	g.mu.Lock()
	gate := g.gate
	g.gate = nil
	g.mu.Unlock()
	if gate != nil {
		release := make(chan struct{})
		gate <- release
		<-release
	}
	return sh, err
}

// TestAnnouncedWriteOutranksAnOlderRead keeps what seen guards: a read sent
// before a write, whose reply arrives after the write's event, is older than
// the announced token. It must not be adopted, and it is no reason to distrust
// the event or to fetch.
func TestAnnouncedWriteOutranksAnOlderRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		up := tokentest.New(time.Hour)
		st := &gatedStore{Store: tokentest.NewStore()}
		o, logs := logged()
		s, err := token.NewSource("test", up, st, st, o)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		first, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The next read (started by a Resync) is held after it read the store.
		gate := make(chan chan struct{})
		st.mu.Lock()
		st.gate = gate
		st.mu.Unlock()
		st.Notify(token.Event{Kind: token.Resync})
		release := <-gate
		newer := scenario.Save(t, st, "newer-token-0123456789") // notifies: seen = its version
		close(release)                                          // the held read now returns the first token
		if tok, err := s.Token(ctx); err != nil || (tok.Value != first.Value && tok.Value != newer.Value) {
			t.Fatalf("Token while the re-read runs = %v, %v", tok, err)
		}
		synctest.Wait() // the re-read runs in the background
		if tok, err := s.Token(ctx); err != nil || tok.Value != newer.Value {
			t.Fatalf("Token = %v, %v; want the announced newer token", tok, err)
		}
		if up.Calls() != 1 {
			t.Errorf("upstream calls = %d, want 1", up.Calls())
		}
		if n := logs.Count("WARN", "does not confirm"); n != 0 {
			t.Errorf("a genuine event was distrusted: %s", logs.String())
		}
	})
}

// TestFetchesPerLifetimeAreBounded: whatever makes a Source fetch again and
// again within one lifetime (here a caller that invalidates every token), it
// stops after MaxFetchesPerLifetime fetches, warns, and backs off through
// the shared backoff, so that other instances wait too.
func TestFetchesPerLifetimeAreBounded(t *testing.T) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	o, logs := logged()
	s := newSource(t, up, st, o)
	var err error
	for range 3 * token.MaxFetchesPerLifetime {
		var tok token.Token
		if tok, err = s.Token(ctx); err != nil {
			break
		}
		if err := s.Invalidate(ctx, tok.Value); err != nil {
			t.Fatal(err)
		}
	}
	if !errors.Is(err, token.ErrTooManyFetches) || !errors.Is(err, token.ErrUpstreamBackoff) {
		t.Fatalf("err = %v, want ErrTooManyFetches and ErrUpstreamBackoff", err)
	}
	if n := up.Calls(); n != token.MaxFetchesPerLifetime {
		t.Errorf("upstream calls = %d, want %d", n, token.MaxFetchesPerLifetime)
	}
	if b, _ := st.LoadBackoff(ctx); b.Remaining < 9*time.Minute {
		t.Errorf("shared backoff = %v, want about 10 minutes (the oldest fetch is less than a lifetime old)", b.Remaining)
	}
	other := newSource(t, up, st, o)
	if _, err := other.Token(ctx); !errors.Is(err, token.ErrUpstreamBackoff) {
		t.Errorf("another instance got %v, want the shared backoff", err)
	}
	if logs.Count("WARN", "too many fetches") != 1 {
		t.Errorf("no warning about too many fetches:\n%s", logs.String())
	}
}

// TestOversizedTokenIsNotShared: a token longer than MaxTokenLen is neither
// served nor stored, and every instance backs off.
func TestOversizedTokenIsNotShared(t *testing.T) {
	scenario.OversizedTokenIsNotShared(t, memory())
}

// TestWritesFailReadsWorkLogsOnce: a store that reads but refuses writes (out
// of memory, a read-only replica) is one outage, logged once and ended once,
// and is retried once per RetryInterval, not once per call.
func TestWritesFailReadsWorkLogsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		const lifetime = 100 * time.Millisecond
		up := tokentest.New(lifetime)
		st := tokentest.NewStore()
		o, logs := logged()
		o.RetryInterval = 50 * time.Millisecond
		s := newSource(t, up, st, o)
		if _, err := s.Token(ctx); err != nil {
			t.Fatal(err)
		}
		st.SetReadOnly(true)
		time.Sleep(lifetime) // let the token expire: the subject here is time
		before := st.Calls()
		start := time.Now()
		var calls, errs int
		// A caller every millisecond for 500ms.
		for ; time.Since(start) < 500*time.Millisecond; time.Sleep(time.Millisecond) {
			calls++
			if _, err := s.Token(ctx); err != nil {
				errs++
				if !errors.Is(err, token.ErrStoreUnavailable) {
					t.Fatalf("err = %v, want ErrStoreUnavailable", err)
				}
			}
		}
		elapsed := time.Since(start)
		storeCalls := st.Calls() - before
		t.Logf("%d Token calls (%d errors) in %v sent %d store calls", calls, errs, elapsed, storeCalls)
		// Each attempt reads and tries the lock: 2 calls per RetryInterval.
		if most := 2 * (int(elapsed/o.RetryInterval) + 1); storeCalls > most {
			t.Errorf("%d store calls in %v, want at most %d", storeCalls, elapsed, most)
		}
		if errs != calls {
			t.Errorf("%d of %d calls failed, want all: there is no valid token to serve", errs, calls)
		}
		st.SetReadOnly(false)
		time.Sleep(o.RetryInterval) // the Source tries the store again after it
		if tok, err := s.Token(ctx); err != nil || !up.Valid(tok.Value) {
			t.Fatalf("a RetryInterval after the store took writes again: %v, %v", tok, err)
		}
		synctest.Wait()
		if n := logs.Count("WARN", "unavailable"); n != 1 {
			t.Errorf("%d 'unavailable' warnings, want 1:\n%s", n, logs.String())
		}
		if n := logs.Count("INFO", "available again"); n != 1 {
			t.Errorf("%d 'available again' lines, want 1:\n%s", n, logs.String())
		}
	})
}

// TestUnsubscribedRechecksOnDemand: while the store reports notifications
// unavailable, a Source re-reads the token it serves at most once per poll
// interval, only when a caller asks, and so sees another instance's write
// without a notification; idle, it reads nothing. Resync ends it.
func TestUnsubscribedRechecksOnDemand(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		up := tokentest.New(time.Hour)
		st := tokentest.NewStore()
		o := opts() // PollInterval 20ms
		s := newSource(t, up, st, o)
		if _, err := s.Token(ctx); err != nil {
			t.Fatal(err)
		}
		st.Notify(token.Event{Kind: token.Unsubscribed})
		st.SetSilent(true)
		newer := scenario.Save(t, st, "newer-token-0123456789")
		loads := st.Loads()
		start := time.Now()
		// A caller every millisecond sees the write within a poll interval.
		var got token.Token
		for ; got.Value != newer.Value; time.Sleep(time.Millisecond) {
			if time.Since(start) > o.PollInterval {
				t.Fatalf("the unsubscribed Source did not re-read the store within %v", o.PollInterval)
			}
			got, _ = s.Token(ctx)
			synctest.Wait() // the re-read runs in the background
		}
		// Keep calling for a while: one read per poll interval at most.
		for ; time.Since(start) < 200*time.Millisecond; time.Sleep(time.Millisecond) {
			if _, err := s.Token(ctx); err != nil {
				t.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		if n, most := st.Loads()-loads, int(elapsed/o.PollInterval)+1; n < 2 || n > most {
			t.Errorf("%d loads in %v, want 2 to %d", n, elapsed, most)
		}
		idle := st.Loads()
		time.Sleep(5 * o.PollInterval) // idle: the subject is that nothing happens
		if n := st.Loads() - idle; n != 0 {
			t.Errorf("%d loads while nobody called", n)
		}
		st.Notify(token.Event{Kind: token.Resync})
		synctest.Wait() // the resync's read
		for range 3 {
			if _, err := s.Token(ctx); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		settled := st.Loads()
		for range 1000 {
			_, _ = s.Token(ctx)
		}
		time.Sleep(2 * o.PollInterval) // the subject is that no recheck comes
		for range 1000 {
			_, _ = s.Token(ctx)
		}
		synctest.Wait()
		if n := st.Loads() - settled; n != 0 {
			t.Errorf("%d loads after Resync: rechecks did not stop", n)
		}
		if up.Calls() != 1 {
			t.Errorf("upstream calls = %d, want 1", up.Calls())
		}
	})
}

// TestFetchCapEndsWithItsBackoff: when the backoff the fetch cap recorded is
// over (10 minutes for a 1-hour token, in a synctest bubble), the Source
// fetches again; the cap never holds it for a whole long lifetime. Callers
// meanwhile learn why they wait.
func TestFetchCapEndsWithItsBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		up := tokentest.New(time.Hour)
		st := tokentest.NewStore()
		s, err := token.NewSource("test", up, st, st, opts())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		tok, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range token.MaxFetchesPerLifetime - 1 {
			if err := s.Invalidate(ctx, tok.Value); err != nil {
				t.Fatal(err)
			}
			if tok, err = s.Token(ctx); err != nil {
				t.Fatalf("Token after Invalidate %d: %v", i+1, err)
			}
		}
		_ = s.Invalidate(ctx, tok.Value)
		if _, err = s.Token(ctx); !errors.Is(err, token.ErrTooManyFetches) {
			t.Fatalf("fetch %d: %v, want ErrTooManyFetches", token.MaxFetchesPerLifetime+1, err)
		}
		var be *token.BackoffError
		if _, err := s.Token(ctx); !errors.As(err, &be) || be.Failures != 1 || be.Class != token.ClassTooManyFetches || !errors.Is(err, token.ErrTooManyFetches) {
			t.Errorf("a later caller: %v, want a BackoffError naming the cap", err)
		}
		time.Sleep(10*time.Minute + time.Second)
		got, err := s.Token(ctx)
		if err != nil || !up.Valid(got.Value) {
			t.Fatalf("10 minutes later: %v, %v", got, err)
		}
		if n := up.Issued(); n != token.MaxFetchesPerLifetime+1 {
			t.Errorf("upstream issued %d, want %d", n, token.MaxFetchesPerLifetime+1)
		}
	})
}

// TestSupersededEntryWaitsOutRetryInterval: a valid token that an event
// marked superseded, whose refresh failed against a failing store, is served
// without a new store call on every Token until RetryInterval has passed;
// then the Source tries the store again.
func TestSupersededEntryWaitsOutRetryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		up := tokentest.New(time.Hour)
		st := tokentest.NewStore()
		o := opts()
		o.RetryInterval = time.Second
		s := newSource(t, up, st, o)
		tok, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sh, _ := st.Load(ctx)
		st.SetDown(true)
		before := st.Calls()
		st.Notify(token.Event{Kind: token.Refreshed, Version: sh.Version + 1})
		synctest.Wait() // the refresh the event started fails
		failed := st.Calls()
		if failed == before {
			t.Fatal("the event started no refresh")
		}
		// 4 callers, each calling every millisecond, until just before
		// the retry interval ends.
		start := time.Now()
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for ; time.Since(start) < o.RetryInterval-time.Millisecond; time.Sleep(time.Millisecond) {
					if got, err := s.Token(ctx); err != nil || got.Value != tok.Value {
						t.Errorf("Token = %v, %v; want the valid token", got, err)
						return
					}
				}
			})
		}
		wg.Wait()
		if n := st.Calls() - failed; n != 0 {
			t.Errorf("%d store calls within RetryInterval of the failed refresh, want 0", n)
		}
		time.Sleep(2 * time.Millisecond) // just past RetryInterval
		if got, err := s.Token(ctx); err != nil || got.Value != tok.Value {
			t.Errorf("Token = %v, %v; want the valid token", got, err)
		}
		synctest.Wait()
		if st.Calls() == failed {
			t.Error("no new refresh after RetryInterval")
		}
	})
}

// TestDirectFetchAfterInvalidate: with FetchWhenStoreDown, a token the
// upstream rejected while the store is down is replaced by a direct fetch,
// not served until it expires.
func TestDirectFetchAfterInvalidate(t *testing.T) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	o := opts()
	o.FetchWhenStoreDown = true
	o.RetryInterval = 10 * time.Millisecond
	s := newSource(t, up, st, o)
	tok, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.SetDown(true)
	_ = s.Invalidate(ctx, tok.Value) // the store call fails; the entry is bad
	got, err := s.Token(ctx)
	if err != nil || got.Value == tok.Value || !up.Valid(got.Value) {
		t.Fatalf("Token = %v, %v; want a directly fetched token", got, err)
	}
}
