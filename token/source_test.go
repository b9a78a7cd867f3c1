package token_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

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
	const lifetime = 200 * time.Millisecond
	up := tokentest.New(lifetime)
	st := tokentest.NewStore()
	o := opts()
	var srcs []*token.Source
	for range 8 {
		srcs = append(srcs, newSource(t, up, st, o))
	}
	res := tokentest.Load(context.Background(), srcs, tokentest.LoadConfig{
		Goroutines: 64, Duration: 10 * lifetime, Think: 2 * time.Millisecond, Upstream: up})
	checkLoad(t, res, up, lifetime, o.RefreshAhead)
}

func checkLoad(t *testing.T, res tokentest.Result, up *tokentest.Upstream, lifetime time.Duration, ahead float64) {
	t.Helper()
	t.Logf("%s", res)
	if res.Errors > 0 {
		t.Errorf("%d callers got errors, first: %v", res.Errors, res.FirstErr)
	}
	times := up.IssueTimes()
	// A token is replaced no earlier than its refresh-ahead window allows
	// (slack for timers) and before it expires.
	minGap := time.Duration(float64(lifetime)*(1-ahead)) - lifetime/10
	for i := 1; i < len(times); i++ {
		gap := times[i].Sub(times[i-1])
		if gap < minGap {
			t.Errorf("fetch %d came %v after the previous one; want at least %v (a duplicate fetch)", i, gap, minGap)
		}
	}
	// One fetch per lifetime less the refresh-ahead window. More would be
	// duplicate fetches; fewer means refreshes ran late on a starved CPU.
	want := int(res.Duration / time.Duration(float64(lifetime)*(1-ahead)))
	if n := up.Issued(); n > want+1 {
		t.Errorf("upstream issued %d tokens over %v; want at most %d", n, res.Duration, want+1)
	} else if n < want-1 {
		t.Logf("upstream issued only %d of %d tokens: refreshes ran late", n, want)
	}
	if res.MaxStale > 100*time.Millisecond {
		t.Errorf("a caller got a token that had been invalid for %v", res.MaxStale)
	}
}

func TestInvalidateStormFetchesOnce(t *testing.T) {
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	var srcs []*token.Source
	for range 8 {
		srcs = append(srcs, newSource(t, up, st, opts()))
	}
	ctx := context.Background()
	bad, err := srcs[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range srcs {
		if tok, err := s.Token(ctx); err != nil || tok.Value != bad.Value {
			t.Fatalf("Token = %v, %v; want the shared %v", tok, err, bad)
		}
	}
	var wg sync.WaitGroup
	for i := range 1000 {
		wg.Go(func() {
			s := srcs[i%len(srcs)]
			if err := s.Invalidate(ctx, bad.Value); err != nil {
				t.Error(err)
			}
			tok, err := s.Token(ctx)
			if err != nil || tok.Value == bad.Value {
				t.Errorf("after Invalidate: Token = %v, %v", tok, err)
			}
		})
	}
	wg.Wait()
	if n := up.Calls(); n != 2 {
		t.Errorf("upstream calls = %d, want 2 (first token and one refresh)", n)
	}
	// Invalidating the replaced token again fetches nothing.
	for _, s := range srcs {
		if err := s.Invalidate(ctx, bad.Value); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := up.Calls(); n != 2 {
		t.Errorf("a stale Invalidate fetched: upstream calls = %d, want 2", n)
	}
}

func TestUpstreamErrorIsReturnedAndNotCached(t *testing.T) {
	up := tokentest.New(time.Hour)
	quota := errors.New("quota exceeded")
	up.FailNext(quota)
	st := tokentest.NewStore()
	o := opts()
	o.BackoffPolicy = func(error, int) time.Duration { return 100 * time.Millisecond }
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
	for _, src := range []*token.Source{s, other} {
		var be *token.BackoffError
		if _, err := src.Token(ctx); !errors.As(err, &be) || !errors.Is(err, token.ErrUpstreamBackoff) || be.Class != token.ClassTemporary {
			t.Errorf("Token during the backoff: %v", err)
		}
	}
	if up.Calls() != 1 {
		t.Errorf("upstream calls during the backoff: %d, want 1", up.Calls())
	}
	time.Sleep(100 * time.Millisecond) // the backoff's length, on purpose
	tok, err := s.Token(ctx)
	if err != nil || !up.Valid(tok.Value) {
		t.Fatalf("Token after recovery = %v, %v", tok, err)
	}
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

// TestRefreshAheadDoesNotWait: a caller that still has a valid token gets it
// at once while the refresh runs, even if the upstream hangs.
func TestRefreshAheadDoesNotWait(t *testing.T) {
	const lifetime = 400 * time.Millisecond
	up := tokentest.New(lifetime)
	st := tokentest.NewStore()
	o := opts()
	o.RefreshAhead = 0.5
	s := newSource(t, up, st, o)
	ctx := context.Background()
	first, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	entered, release := up.Hold()
	defer release()
	// Poll until the refresh-ahead deadline passes and a refresh starts.
	var got token.Token
	for deadline := time.Now().Add(lifetime); ; {
		got, err = s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-entered:
		default:
			if time.Now().After(deadline) {
				t.Fatal("no refresh started before the token expired")
			}
			time.Sleep(time.Millisecond) // polling a clock-driven state
			continue
		}
		break
	}
	// The fetch is now blocked; callers still get the old token at once.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if got, err = s.Token(cctx); err != nil || got.Value != first.Value {
		t.Fatalf("Token during refresh = %v, %v; want %v", got, err, first)
	}
	release()
	for got.Value == first.Value {
		if got, err = s.Token(ctx); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	if !up.Valid(got.Value) {
		t.Errorf("new token %v is not valid", got)
	}
}

func TestWaiterHonoursContext(t *testing.T) {
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	other, err := st.TryLock(context.Background()) // another instance is refreshing
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release(context.Background())
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
	v, _ := st.NextVersion(context.Background())
	if err := st.Save(context.Background(), token.Shared{Value: "0123456789abcdef", Version: v, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Errorf("waiter: %v", err)
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

type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}

var _ io.Writer = (*syncBuffer)(nil)

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
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	s := newSource(t, up, st, opts())
	ctx := context.Background()
	old, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.SetSilent(true)
	v, _ := st.NextVersion(ctx)
	newer := token.Shared{Value: "newer-token-0123456789", Version: v, TTL: time.Hour, Lifetime: time.Hour}
	if err := st.Save(ctx, newer); err != nil {
		t.Fatal(err)
	}
	if tok, _ := s.Token(ctx); tok.Value != old.Value {
		t.Fatalf("the Source saw a write without a notification")
	}
	st.Notify(token.Event{Kind: token.Resync})
	deadline := time.Now().Add(5 * time.Second)
	for {
		tok, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tok.Value == newer.Value {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Resync did not make the Source read the newer token")
		}
		runtime.Gosched() // the re-read runs in the background
	}
	if up.Calls() != 1 {
		t.Errorf("upstream calls = %d, want 1", up.Calls())
	}
}

// TestFetchReason: the Fetcher learns why it is called, on the instance that
// invalidated and on another one that refreshes after the invalidation.
func TestFetchReason(t *testing.T) {
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
	// Wait for a routine refresh (expiring).
	for up.Issued() < 3 {
		if _, err := b.Token(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // callers at a steady pace
	}
	mu.Lock()
	defer mu.Unlock()
	want := []token.Reason{token.ReasonMissing, token.ReasonInvalidated, token.ReasonExpiring}
	if !slices.Equal(reasons[:3], want) {
		t.Errorf("reasons = %v, want %v", reasons, want)
	}
	if token.FetchReason(ctx) != 0 {
		t.Error("FetchReason of a plain context is not 0")
	}
}

// TestCloseWakesWaiters: a caller waiting for another instance's refresh gets
// ErrClosed when the Source closes, not a context error of its own.
func TestCloseWakesWaiters(t *testing.T) {
	st := tokentest.NewStore()
	other, err := st.TryLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release(context.Background())
	s := newSource(t, tokentest.New(time.Hour), st, opts())
	errc := make(chan error)
	go func() {
		_, err := s.Token(context.Background())
		errc <- err
	}()
	for st.Loads() == 0 {
		runtime.Gosched() // until the waiter's refresh has read the store
	}
	_ = s.Close()
	if err := <-errc; !errors.Is(err, token.ErrClosed) || errors.Is(err, context.Canceled) {
		t.Errorf("waiter got %v, want ErrClosed", err)
	}
}

// TestWaitTimeout: a refresh that waits longer than WaitTimeout fails with
// ErrRefreshTimeout, which callers can tell from their own deadline.
func TestWaitTimeout(t *testing.T) {
	st := tokentest.NewStore()
	other, err := st.TryLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release(context.Background())
	o := opts()
	o.WaitTimeout = 50 * time.Millisecond
	s := newSource(t, tokentest.New(time.Hour), st, o)
	_, err = s.Token(context.Background())
	if !errors.Is(err, token.ErrRefreshTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want ErrRefreshTimeout and DeadlineExceeded", err)
	}
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
		deadline := time.Now().Add(5 * time.Second)
		for {
			ta, _ = a.Token(ctx)
			tb, _ = b.Token(ctx)
			sh, err := st.Load(ctx)
			if err == nil && ta.Value == tb.Value && sh.Value == ta.Value {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no agreement: a %v, b %v, store %v (%v)", ta, tb, token.Token{Value: sh.Value}, err)
			}
			runtime.Gosched() // the reconciliation runs in the background
		}
		if up.Calls() != 2 {
			t.Errorf("%d upstream calls, want 2: reconciling must not fetch", up.Calls())
		}
	})
}

// TestStoreDownEdges covers the opt-in direct fetch's failure paths.
func TestStoreDownEdges(t *testing.T) {
	ctx := context.Background()
	o := opts()
	o.FetchWhenStoreDown = true

	t.Run("a failing upstream is backed off", func(t *testing.T) {
		up := tokentest.New(time.Hour)
		up.FailNext(nil, nil, nil, nil, nil, nil, nil, nil, nil, nil)
		st := tokentest.NewStore()
		st.SetDown(true)
		s := newSource(t, up, st, o)
		for start := time.Now(); time.Since(start) < 200*time.Millisecond; {
			_, _ = s.Token(ctx)
		}
		if n := up.Calls(); n > 2 {
			t.Errorf("%d upstream calls in 200ms from one Source", n)
		}
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
		for time.Until(first.ExpiresAt) > 50*time.Millisecond {
			if tok, err := s.Token(ctx); err != nil || tok.Value != first.Value {
				t.Fatalf("Token = %v, %v", tok, err)
			}
			time.Sleep(5 * time.Millisecond) // callers over time
		}
		if up.Calls() != 1 {
			t.Errorf("%d upstream calls while a valid token was held", up.Calls())
		}
	})
}

// TestBackoffEndsWithASave: an instance that knows of a backoff serves the
// token another instance saved, without waiting for the backoff to end.
func TestBackoffEndsWithASave(t *testing.T) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	up.FailNext(nil)
	st := tokentest.NewStore()
	o := opts()
	o.BackoffPolicy = func(error, int) time.Duration { return time.Minute }
	s := newSource(t, up, st, o)
	if _, err := s.Token(ctx); err == nil {
		t.Fatal("the failing fetch succeeded")
	}
	if _, err := s.Token(ctx); !errors.Is(err, token.ErrUpstreamBackoff) {
		t.Fatalf("during the backoff: %v", err)
	}
	v, _ := st.NextVersion(ctx)
	if err := st.Save(ctx, token.Shared{Value: "saved-elsewhere-0123", Version: v, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if tok, err := s.Token(ctx); err != nil || tok.Value != "saved-elsewhere-0123" {
		t.Errorf("after another instance's save: %v, %v", tok, err)
	}
}
