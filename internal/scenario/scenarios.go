package scenario

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// OneFetchPerLifetime is the central claim: 8 instances × 64 goroutines
// call Token for the given number of token lifetimes against a strict
// upstream. Every token is replaced only inside its refresh-ahead window,
// no caller sees an error, and a replaced token is handed out at most
// b.MaxStale after its replacement.
func OneFetchPerLifetime(t *testing.T, b Backend, lifetime time.Duration, lifetimes int) {
	up := tokentest.New(lifetime)
	srcs := b.Sources(t, 8, up, b.Options)
	res := tokentest.Load(context.Background(), srcs, tokentest.LoadConfig{
		Goroutines: 64, Duration: time.Duration(lifetimes) * lifetime, Think: b.Think, Upstream: up})
	ahead := b.Options.RefreshAhead
	if ahead == 0 {
		ahead = 0.2 // token.Options' default
	}
	CheckLoad(t, res, up, lifetime, ahead, b.MaxStale)
}

// CheckLoad checks a Load run against a strict upstream whose tokens live
// for lifetime and are refreshed the fraction ahead before they expire: no
// caller error, no duplicate fetch, one fetch per refresh period at most,
// and no token handed out longer than maxStale after it died.
func CheckLoad(t *testing.T, res tokentest.Result, up *tokentest.Upstream, lifetime time.Duration, ahead float64, maxStale time.Duration) {
	t.Helper()
	t.Logf("%s; upstream issued %d", res, up.Issued())
	if res.Errors > 0 {
		t.Errorf("%d callers got errors, first: %v", res.Errors, res.FirstErr)
	}
	// A token is replaced no earlier than its refresh-ahead window allows
	// (slack for timers) and before it expires.
	period := time.Duration(float64(lifetime) * (1 - ahead))
	times := up.IssueTimes()
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < period-lifetime/10 {
			t.Errorf("token %d issued %v after the previous one; want at least %v (a duplicate fetch)", i, gap, period-lifetime/10)
		}
	}
	// One fetch per refresh period. More would be duplicate fetches;
	// fewer means refreshes ran late on a starved CPU.
	want := int(res.Duration / period)
	if n := up.Issued(); n > want+1 {
		t.Errorf("upstream issued %d tokens over %v; want at most %d", n, res.Duration, want+1)
	} else if n < want-1 {
		t.Logf("upstream issued only %d of %d tokens: refreshes ran late", n, want)
	}
	if up.Calls() != up.Issued() {
		t.Errorf("upstream calls %d != tokens issued %d", up.Calls(), up.Issued())
	}
	if res.MaxStale > maxStale {
		t.Errorf("a caller got a token that had been invalid for %v; want at most %v", res.MaxStale, maxStale)
	}
}

// InvalidateStormFetchesOnce: 1000 goroutines over 8 instances report the
// shared token bad at once. The cluster fetches one replacement, and a
// later Invalidate of the replaced token fetches nothing.
func InvalidateStormFetchesOnce(t *testing.T, b Backend) {
	up := tokentest.New(time.Hour)
	srcs := b.Sources(t, 8, up, b.Options)
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
	for _, s := range srcs {
		if err := s.Invalidate(ctx, bad.Value); err != nil {
			t.Fatal(err)
		}
		if tok, err := s.Token(ctx); err != nil || !up.Valid(tok.Value) {
			t.Fatalf("Token = %v, %v", tok, err)
		}
	}
	if n := up.Calls(); n != 2 {
		t.Errorf("a stale Invalidate fetched: upstream calls = %d, want 2", n)
	}
}

// OversizedTokenIsNotShared: a token longer than MaxTokenLen is neither
// served nor stored; the error is typed, and every instance backs off as
// after a permanent error instead of fetching it again and again.
func OversizedTokenIsNotShared(t *testing.T, b Backend) {
	ctx := context.Background()
	var calls atomic.Int32
	big := token.FetcherFunc(func(context.Context) (token.Token, error) {
		calls.Add(1)
		return token.Token{Value: strings.Repeat("x", token.MaxTokenLen+1), ExpiresAt: time.Now().Add(time.Hour)}, nil
	})
	srcs := b.Sources(t, 2, big, b.Options)
	if _, err := srcs[0].Token(ctx); !errors.Is(err, token.ErrTokenTooLarge) {
		t.Fatalf("err = %v, want ErrTokenTooLarge", err)
	}
	for range 10 {
		var be *token.BackoffError
		if _, err := srcs[1].Token(ctx); !errors.As(err, &be) || !errors.Is(err, token.ErrUpstreamBackoff) || be.Remaining < 9*time.Minute {
			t.Fatalf("the other instance: %v, want a permanent-error backoff", err)
		}
	}
	if _, err := b.Store.Load(ctx); !errors.Is(err, token.ErrNotFound) {
		t.Errorf("the store holds something: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("upstream calls = %d, want 1", n)
	}
}

// ResetBackoffReachesOtherInstances: an instance that learned of a backoff
// re-reads the shared record at most once per RetryInterval, so another
// instance's ResetBackoff ends its wait too.
func ResetBackoffReachesOtherInstances(t *testing.T, b Backend) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	up.FailNext(SecretError{})
	o := b.Options
	o.RetryInterval = 50 * time.Millisecond
	srcs := b.Sources(t, 2, up, o)
	x, y := srcs[0], srcs[1]
	_, _ = x.Token(ctx)
	if _, err := y.Token(ctx); !errors.Is(err, token.ErrUpstreamBackoff) {
		t.Fatalf("y: %v, want the backoff", err)
	}
	if err := x.ResetBackoff(ctx); err != nil {
		t.Fatal(err)
	}
	var tok token.Token
	var err error
	if !Retry(2*time.Second, 5*time.Millisecond, func() bool {
		tok, err = y.Token(ctx)
		return err == nil && up.Valid(tok.Value)
	}) {
		t.Fatalf("y after x's ResetBackoff: %v, %v", tok, err)
	}
	if n := up.Calls(); n != 2 {
		t.Errorf("upstream calls = %d, want 2 (the failure and one fetch)", n)
	}
}

// A DeadUpstream is an upstream that always fails with Err: the shared
// backoff (DefaultBackoffPolicy) must hold the whole cluster to between one
// and Most calls over Duration.
type DeadUpstream struct {
	Name     string
	Err      error
	Most     int
	Duration time.Duration
}

// DeadUpstreams are the cases of DeadUpstreamIsBackedOff.
var DeadUpstreams = []DeadUpstream{
	// Default backoff: 1s, 2s, 4s (±20%): at most 4 calls in 6s.
	{"temporary", errors.New("HTTP status 503"), 4, 6 * time.Second},
	// 10 minutes after an error retrying cannot fix.
	{"permanent", SecretError{}, 1, 2 * time.Second},
}

// DeadUpstreamIsBackedOff: 8 instances × callers goroutines, each calling
// every b.Think, ask for a token from the dead upstream up. The backoff is
// shared through the store, so the whole cluster calls the upstream a
// handful of times.
func DeadUpstreamIsBackedOff(t *testing.T, b Backend, up DeadUpstream, callers int) {
	var calls atomic.Int64
	dead := token.FetcherFunc(func(context.Context) (token.Token, error) {
		calls.Add(1)
		return token.Token{}, up.Err
	})
	o := b.Options
	o.BackoffPolicy = nil // the default policy
	srcs := b.Sources(t, 8, dead, o)
	ctx, cancel := context.WithTimeout(context.Background(), up.Duration)
	defer cancel()
	var errs, backoffs atomic.Int64
	var wg sync.WaitGroup
	for _, s := range srcs {
		for range callers {
			wg.Go(func() {
				tick := time.NewTicker(b.Think) // a caller retrying
				defer tick.Stop()
				for ctx.Err() == nil {
					_, err := s.Token(ctx)
					if err == nil {
						t.Error("a dead upstream gave a token")
						return
					}
					errs.Add(1)
					if errors.Is(err, token.ErrUpstreamBackoff) {
						backoffs.Add(1)
					}
					select {
					case <-tick.C:
					case <-ctx.Done():
					}
				}
			})
		}
	}
	wg.Wait()
	t.Logf("%s: %d upstream calls from 8 instances × %d goroutines over %v; %d caller errors, %d of them backoff errors",
		up.Name, calls.Load(), callers, up.Duration, errs.Load(), backoffs.Load())
	if n := calls.Load(); n < 1 || n > int64(up.Most) {
		t.Errorf("%d upstream calls, want 1 to %d", n, up.Most)
	}
}
