package token_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

func opts() token.Options {
	return token.Options{
		RefreshAhead:    0.2,
		MinRefreshAhead: time.Millisecond,
		PollInterval:    20 * time.Millisecond,
		Logger:          quiet,
	}
}

func newSource(t testing.TB, up token.Fetcher, st *tokentest.Store, o token.Options) *token.Source {
	t.Helper()
	s, err := token.NewSource("test", up, st, st, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// memory is the backend of the shared scenarios in this package: instances
// share one in-memory tokentest.Store.
func memory() scenario.Backend {
	st := tokentest.NewStore()
	return scenario.Backend{
		NewSource: func(t *testing.T, _ int, f token.Fetcher, o token.Options) *token.Source {
			return newSource(t, f, st, o)
		},
		Store:    st,
		Options:  opts(),
		Think:    2 * time.Millisecond,
		MaxStale: 100 * time.Millisecond,
	}
}

// syncBuffer collects log output; it is safe for concurrent use.
type syncBuffer = scenario.Logs

// logged returns opts() with a JSON logger, and what it logs.
func logged() (token.Options, *syncBuffer) {
	logs := new(syncBuffer)
	o := opts()
	o.Logger = logs.Logger()
	return o, logs
}

// lockedElsewhere takes st's refresh lock until the test ends, as another
// instance that is refreshing.
func lockedElsewhere(t testing.TB, st *tokentest.Store) {
	t.Helper()
	other, err := st.TryLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Release(context.Background()) })
}

func TestHotPathDoesNoIO(t *testing.T) {
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	s := newSource(t, up, st, opts())
	ctx := context.Background()
	first, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	loads := st.Loads()
	for range 10000 {
		tok, err := s.Token(ctx)
		if err != nil || tok.Value != first.Value {
			t.Fatalf("Token = %v, %v; want %v", tok, err, first)
		}
	}
	if got := st.Loads(); got != loads {
		t.Errorf("store loads grew from %d to %d on the hot path", loads, got)
	}
	if n := up.Calls(); n != 1 {
		t.Errorf("upstream calls = %d, want 1", n)
	}
	if allocs := testing.AllocsPerRun(1000, func() { _, _ = s.Token(ctx) }); allocs != 0 {
		t.Errorf("hot path allocates %v times per call", allocs)
	}
}

// TestOneFetchPerLifetime runs 8 instances × 64 goroutines over 10 lifetimes
// against a strict upstream and checks that no token was replaced before its
// refresh-ahead window, none ran out, and no caller got an error.
func TestOneFetchPerLifetime(t *testing.T) {
	scenario.OneFetchPerLifetime(t, memory(), 200*time.Millisecond, 10)
}

func TestInvalidateStormFetchesOnce(t *testing.T) {
	scenario.InvalidateStormFetchesOnce(t, memory())
}

// TestDeadUpstreamIsBackedOff: the shared backoff holds a dead upstream to a
// handful of calls from 8 instances; in a synctest bubble, 6 s of it take no
// time.
func TestDeadUpstreamIsBackedOff(t *testing.T) {
	for _, up := range scenario.DeadUpstreams {
		t.Run(up.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := memory()
				b.Think = 10 * time.Millisecond
				scenario.DeadUpstreamIsBackedOff(t, b, up, 8)
			})
		})
	}
}

// TestResetBackoffReachesOtherInstances: another instance's ResetBackoff
// ends a backoff this one learned of within its RetryInterval.
func TestResetBackoffReachesOtherInstances(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		scenario.ResetBackoffReachesOtherInstances(t, memory())
	})
}

// TestUpstreamErrorIsReturnedAndNotCached: a failed fetch reaches its caller,
// stores nothing, and backs every instance off for exactly the policy's
// wait (in a synctest bubble), after which the next caller fetches.
func TestUpstreamErrorIsReturnedAndNotCached(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const backoff = 100 * time.Millisecond
		up := tokentest.New(time.Hour)
		quota := errors.New("quota exceeded")
		up.FailNext(quota)
		st := tokentest.NewStore()
		o := opts()
		o.BackoffPolicy = func(error, int) time.Duration { return backoff }
		s := newSource(t, up, st, o)
		other := newSource(t, up, st, o)
		ctx := context.Background()
		_, err := s.Token(ctx)
		if !errors.Is(err, quota) {
			t.Fatalf("Token error = %v, want one wrapping %v", err, quota)
		}
		if _, err := st.Load(ctx); !errors.Is(err, token.ErrNotFound) {
			t.Errorf("store after a failed fetch: %v, want ErrNotFound", err)
		}
		// Every instance backs off: no fetch until the shared wait is over.
		time.Sleep(backoff - time.Millisecond)
		for _, src := range []*token.Source{s, other} {
			var be *token.BackoffError
			if _, err := src.Token(ctx); !errors.As(err, &be) || !errors.Is(err, token.ErrUpstreamBackoff) || be.Class != token.ClassTemporary || be.Remaining != time.Millisecond {
				t.Errorf("Token 1ms before the backoff ends: %v", err)
			}
		}
		if up.Calls() != 1 {
			t.Errorf("upstream calls during the backoff: %d, want 1", up.Calls())
		}
		time.Sleep(time.Millisecond) // the backoff is over
		tok, err := s.Token(ctx)
		if err != nil || !up.Valid(tok.Value) {
			t.Fatalf("Token after recovery = %v, %v", tok, err)
		}
	})
}

func TestBadFetcherResult(t *testing.T) {
	for _, tc := range []struct {
		name string
		tok  token.Token
	}{
		{"empty", token.Token{ExpiresAt: time.Now().Add(time.Hour)}},
		{"expired", token.Token{Value: "abcdefghijklmnop", ExpiresAt: time.Now().Add(-time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := tokentest.NewStore()
			f := token.FetcherFunc(func(context.Context) (token.Token, error) { return tc.tok, nil })
			s := newSource(t, f, st, opts())
			if _, err := s.Token(context.Background()); !errors.Is(err, token.ErrInvalidToken) {
				t.Errorf("err = %v, want ErrInvalidToken", err)
			}
			if _, err := st.Load(context.Background()); !errors.Is(err, token.ErrNotFound) {
				t.Errorf("stored after a bad fetch: %v", err)
			}
		})
	}
}

// TestRefreshAheadDoesNotWait: the refresh starts when the token enters its
// refresh-ahead window, not before, and a caller that still has a valid token
// gets it at once while the refresh runs, even if the upstream hangs. In a
// synctest bubble "at once" is exact: no time passes during the call.
func TestRefreshAheadDoesNotWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime = 400 * time.Millisecond
		up := tokentest.New(lifetime)
		st := tokentest.NewStore()
		o := opts()
		o.RefreshAhead = 0.5 // the window opens at lifetime/2
		s := newSource(t, up, st, o)
		ctx := context.Background()
		first, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		entered, release := up.Hold()
		defer release()
		at := func(when string) {
			t.Helper()
			start := time.Now()
			got, err := s.Token(ctx)
			if err != nil || got.Value != first.Value {
				t.Fatalf("Token %s = %v, %v; want %v", when, got, err, first)
			}
			if waited := time.Since(start); waited != 0 {
				t.Errorf("Token %s waited %v", when, waited)
			}
			synctest.Wait()
		}
		time.Sleep(lifetime/2 - time.Millisecond)
		at("just before the window")
		if len(entered) != 0 || up.Calls() != 1 {
			t.Fatalf("a refresh started before the window: %d upstream calls", up.Calls())
		}
		time.Sleep(time.Millisecond)
		synctest.Wait() // the window opens
		at("as the window opens")
		select {
		case <-entered:
		default:
			t.Fatal("no refresh started in the window")
		}
		// The fetch is now blocked; callers still get the old token at once.
		time.Sleep(lifetime / 4)
		at("during the refresh")
		release()
		synctest.Wait()
		got, err := s.Token(ctx)
		if err != nil || got.Value == first.Value || !up.Valid(got.Value) {
			t.Errorf("Token after the refresh = %v, %v; want a new valid token", got, err)
		}
		if up.Calls() != 2 {
			t.Errorf("upstream calls = %d, want 2", up.Calls())
		}
	})
}

func TestWaiterHonoursContext(t *testing.T) {
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	lockedElsewhere(t, st) // another instance is refreshing
	s := newSource(t, up, st, opts())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() {
		_, err := s.Token(ctx)
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if up.Calls() != 0 {
		t.Errorf("a waiter fetched while another instance held the lock")
	}
	// The waiter wakes on the other instance's write.
	go func() {
		_, err := s.Token(context.Background())
		errc <- err
	}()
	saved := scenario.Save(t, st, "0123456789abcdef")
	if err := <-errc; err != nil {
		t.Errorf("waiter: %v", err)
	}
	if tok, err := s.Token(context.Background()); err != nil || tok.Value != saved.Value {
		t.Errorf("after the other instance's write: %v, %v", tok, err)
	}
}

func TestClose(t *testing.T) {
	up := tokentest.New(time.Hour)
	s, err := token.NewSource("test", up, tokentest.NewStore(), tokentest.NewStore(), opts())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Token(context.Background()); !errors.Is(err, token.ErrClosed) {
		t.Errorf("Token after Close: %v, want ErrClosed", err)
	}
}

func TestTokenIsRedacted(t *testing.T) {
	secret := "SECRETSECRETSECRETSECRET"
	tok := token.Token{Value: secret, ExpiresAt: time.Now()}
	var buf syncBuffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "tok", tok)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "tok", tok)
	for _, s := range []string{
		fmt.Sprint(tok), fmt.Sprintf("%v %+v %#v %s %q", tok, tok, tok, tok, tok),
		fmt.Sprintf("%v", &tok), tok.String(), buf.String(),
	} {
		if containsSecret(s, secret) {
			t.Errorf("secret printed: %s", s)
		}
	}
}

// containsSecret reports whether s holds any 8 consecutive characters of
// secret.
func containsSecret(s, secret string) bool {
	for i := 0; i+8 <= len(secret); i++ {
		if strings.Contains(s, secret[i:i+8]) {
			return true
		}
	}
	return false
}

func BenchmarkTokenHot(b *testing.B) {
	up := tokentest.New(time.Hour)
	s := newSource(b, up, tokentest.NewStore(), opts())
	ctx := context.Background()
	if _, err := s.Token(ctx); err != nil {
		b.Fatal(err)
	}
	var fails atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Token(ctx); err != nil {
				fails.Add(1)
			}
		}
	})
	if fails.Load() > 0 {
		b.Fatalf("%d errors", fails.Load())
	}
}

// TestResyncRereads: notifications were lost (a subscription dropped); the
// store's Resync makes the Source read again instead of serving the replaced
// token until its refresh-ahead window.
func TestResyncRereads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.New(time.Hour)
		st := tokentest.NewStore()
		s := newSource(t, up, st, opts())
		ctx := context.Background()
		old, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.SetSilent(true)
		newer := scenario.Save(t, st, "newer-token-0123456789")
		if tok, _ := s.Token(ctx); tok.Value != old.Value {
			t.Fatalf("the Source saw a write without a notification")
		}
		st.Notify(token.Event{Kind: token.Resync})
		synctest.Wait() // the re-read runs in the background
		if tok, err := s.Token(ctx); err != nil || tok.Value != newer.Value {
			t.Fatalf("after Resync: %v, %v; want the newer token", tok, err)
		}
		if up.Calls() != 1 {
			t.Errorf("upstream calls = %d, want 1", up.Calls())
		}
	})
}

// TestFetchReason: the Fetcher learns why it is called, on the instance that
// invalidated and on another one that refreshes after the invalidation.
func TestFetchReason(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime = 300 * time.Millisecond
		up := tokentest.New(lifetime)
		var mu sync.Mutex
		var reasons []token.Reason
		f := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
			mu.Lock()
			reasons = append(reasons, token.FetchReason(ctx))
			mu.Unlock()
			return up.Fetch(ctx)
		})
		st := tokentest.NewStore()
		a := newSource(t, f, st, opts())
		b := newSource(t, f, st, opts())
		ctx := context.Background()
		first, err := a.Token(ctx) // missing
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Invalidate(ctx, first.Value); err != nil { // invalidated
			t.Fatal(err)
		}
		second, err := b.Token(ctx)
		if err != nil || second.Value == first.Value {
			t.Fatalf("Token after Invalidate = %v, %v", second, err)
		}
		// A routine refresh (expiring) once the token enters its window.
		time.Sleep(lifetime * 8 / 10)
		synctest.Wait()
		if _, err := b.Token(ctx); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := up.Issued(); n != 3 {
			t.Fatalf("upstream issued %d, want 3", n)
		}
		mu.Lock()
		defer mu.Unlock()
		want := []token.Reason{token.ReasonMissing, token.ReasonInvalidated, token.ReasonExpiring}
		if !slices.Equal(reasons, want) {
			t.Errorf("reasons = %v, want %v", reasons, want)
		}
		if token.FetchReason(ctx) != 0 {
			t.Error("FetchReason of a plain context is not 0")
		}
	})
}

// TestCloseWakesWaiters: a caller waiting for another instance's refresh gets
// ErrClosed when the Source closes, not a context error of its own.
func TestCloseWakesWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := tokentest.NewStore()
		lockedElsewhere(t, st) // another instance is refreshing
		s := newSource(t, tokentest.New(time.Hour), st, opts())
		errc := make(chan error)
		go func() {
			_, err := s.Token(context.Background())
			errc <- err
		}()
		synctest.Wait() // the waiter has read the store and waits
		if st.Loads() == 0 {
			t.Fatal("the waiter never read the store")
		}
		_ = s.Close()
		if err := <-errc; !errors.Is(err, token.ErrClosed) || errors.Is(err, context.Canceled) {
			t.Errorf("waiter got %v, want ErrClosed", err)
		}
	})
}

// TestWaitTimeout: a refresh that waits longer than WaitTimeout fails with
// ErrRefreshTimeout, which callers can tell from their own deadline.
func TestWaitTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := tokentest.NewStore()
		lockedElsewhere(t, st) // another instance is refreshing
		o := opts()
		o.WaitTimeout = 50 * time.Millisecond
		s := newSource(t, tokentest.New(time.Hour), st, o)
		start := time.Now()
		_, err := s.Token(context.Background())
		if !errors.Is(err, token.ErrRefreshTimeout) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want ErrRefreshTimeout and DeadlineExceeded", err)
		}
		if waited := time.Since(start); waited != o.WaitTimeout {
			t.Errorf("waited %v, want WaitTimeout (%v)", waited, o.WaitTimeout)
		}
	})
}

// TestStoreDown: with the store down, a Source with no token returns
// ErrStoreUnavailable and fetches nothing; with FetchWhenStoreDown it fetches
// on its own, and once the store is back the fenced write settles on one
// token without fetching again.
func TestStoreDown(t *testing.T) {
	ctx := context.Background()
	t.Run("default", func(t *testing.T) {
		up := tokentest.New(time.Hour)
		st := tokentest.NewStore()
		st.SetDown(true)
		s := newSource(t, up, st, opts())
		if _, err := s.Token(ctx); !errors.Is(err, token.ErrStoreUnavailable) || !errors.Is(err, tokentest.ErrDown) {
			t.Errorf("err = %v, want ErrStoreUnavailable", err)
		}
		if up.Calls() != 0 {
			t.Errorf("%d upstream calls with the store down", up.Calls())
		}
	})
	t.Run("FetchWhenStoreDown", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			up := tokentest.New(time.Hour)
			up.Grace = time.Hour // both directly fetched tokens stay valid
			st := tokentest.NewStore()
			st.SetDown(true)
			o := opts()
			o.FetchWhenStoreDown = true
			a, b := newSource(t, up, st, o), newSource(t, up, st, o)
			ta, err := a.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tb, err := b.Token(ctx)
			if err != nil || tb.Value == ta.Value {
				t.Fatalf("b = %v, %v", tb, err)
			}
			if up.Calls() != 2 {
				t.Errorf("%d upstream calls, want one per instance", up.Calls())
			}
			st.SetDown(false)
			st.Notify(token.Event{Kind: token.Resync}) // the subscription comes back
			synctest.Wait()                            // the reconciliation runs in the background
			ta, _ = a.Token(ctx)
			tb, _ = b.Token(ctx)
			sh, err := st.Load(ctx)
			if err != nil || ta.Value != tb.Value || sh.Value != ta.Value {
				t.Fatalf("no agreement: a %v, b %v, store %v (%v)", ta, tb, token.Token{Value: sh.Value}, err)
			}
			if up.Calls() != 2 {
				t.Errorf("%d upstream calls, want 2: reconciling must not fetch", up.Calls())
			}
		})
	})
}

// TestStoreDownEdges covers the opt-in direct fetch's failure paths.
func TestStoreDownEdges(t *testing.T) {
	ctx := context.Background()
	o := opts()
	o.FetchWhenStoreDown = true

	t.Run("a failing upstream is backed off", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			up := tokentest.New(time.Hour)
			up.FailNext(nil, nil, nil, nil, nil, nil, nil, nil, nil, nil)
			st := tokentest.NewStore()
			st.SetDown(true)
			s := newSource(t, up, st, o)
			// A caller every millisecond for 200ms.
			for start := time.Now(); time.Since(start) < 200*time.Millisecond; time.Sleep(time.Millisecond) {
				_, _ = s.Token(ctx)
			}
			if n := up.Calls(); n > 2 {
				t.Errorf("%d upstream calls in 200ms from one Source", n)
			}
		})
	})
	t.Run("an invalidated direct token is never shared", func(t *testing.T) {
		up := tokentest.New(time.Hour)
		st := tokentest.NewStore()
		st.SetDown(true)
		s := newSource(t, up, st, o)
		bad, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.SetDown(false) // back, with no resync
		if err := s.Invalidate(ctx, bad.Value); err != nil {
			t.Fatal(err)
		}
		tok, err := s.Token(ctx)
		if err != nil || tok.Value == bad.Value {
			t.Fatalf("Token after Invalidate = %v, %v", tok, err)
		}
		if sh, err := st.Load(ctx); err != nil || sh.Value == bad.Value {
			t.Errorf("store holds %v, %v", token.Token{Value: sh.Value}, err)
		}
	})
	t.Run("a valid token is kept during an outage", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			up := tokentest.New(400 * time.Millisecond)
			st := tokentest.NewStore()
			oo := o
			oo.RefreshAhead = 0.5
			s := newSource(t, up, st, oo)
			first, err := s.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.SetDown(true)
			// A caller every 5ms until just before the token expires.
			for ; time.Until(first.ExpiresAt) > 5*time.Millisecond; time.Sleep(5 * time.Millisecond) {
				if tok, err := s.Token(ctx); err != nil || tok.Value != first.Value {
					t.Fatalf("Token = %v, %v", tok, err)
				}
			}
			if up.Calls() != 1 {
				t.Errorf("%d upstream calls while a valid token was held", up.Calls())
			}
		})
	})
}

// backingOff returns a Source of st whose fetch from up failed, and which now
// answers with the minute-long shared backoff.
func backingOff(t *testing.T, up *tokentest.Upstream, st *tokentest.Store) *token.Source {
	t.Helper()
	ctx := context.Background()
	o := opts()
	o.BackoffPolicy = func(error, int) time.Duration { return time.Minute }
	s := newSource(t, up, st, o)
	if _, err := s.Token(ctx); err == nil {
		t.Fatal("the failing fetch succeeded")
	}
	if _, err := s.Token(ctx); !errors.Is(err, token.ErrUpstreamBackoff) {
		t.Fatalf("during the backoff: %v, want ErrUpstreamBackoff", err)
	}
	return s
}

// TestBackoffEndsWithASave: an instance that knows of a backoff serves the
// token another instance saved, without waiting for the backoff to end.
func TestBackoffEndsWithASave(t *testing.T) {
	up := tokentest.New(time.Hour)
	up.FailNext(nil)
	st := tokentest.NewStore()
	s := backingOff(t, up, st)
	saved := scenario.Save(t, st, "saved-elsewhere-0123")
	if tok, err := s.Token(context.Background()); err != nil || tok.Value != saved.Value {
		t.Errorf("after another instance's save: %v, %v", tok, err)
	}
}
