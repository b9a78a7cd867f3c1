package token_test

// The protocol's timing, in synctest bubbles: the fake clock makes every
// wait exact and every test instant.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestPollFallback: a waiter whose notification is lost (another instance
// refreshes, the store announces nothing) re-reads the store after
// PollInterval, not before, and then returns the token it finds.
func TestPollFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		st := tokentest.NewStore()
		lockedElsewhere(t, st) // another instance is refreshing
		o := opts()
		up := tokentest.New(time.Hour)
		s := newSource(t, up, st, o)
		st.SetSilent(true) // the other instance's notification is lost
		type result struct {
			tok   token.Token
			err   error
			after time.Duration
		}
		got := make(chan result, 1)
		start := time.Now()
		go func() {
			tok, err := s.Token(ctx)
			got <- result{tok, err, time.Since(start)}
		}()
		synctest.Wait() // the waiter has read the store, found the lock held, and waits
		loads := st.Loads()
		saved := scenario.Save(t, st, "saved-by-the-other-0123")
		time.Sleep(o.PollInterval - time.Millisecond)
		synctest.Wait()
		select {
		case r := <-got:
			t.Fatalf("the waiter returned %v, %v after %v, before its poll interval", r.tok, r.err, r.after)
		default:
		}
		if n := st.Loads() - loads; n != 0 {
			t.Errorf("%d reads before the poll interval ended", n)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		select {
		case r := <-got:
			if r.err != nil || r.tok.Value != saved.Value || r.after != o.PollInterval {
				t.Errorf("the waiter got %v, %v after %v; want the saved token after PollInterval (%v)", r.tok, r.err, r.after, o.PollInterval)
			}
		default:
			t.Fatal("the waiter did not re-read the store after PollInterval")
		}
		if n := st.Loads() - loads; n != 1 {
			t.Errorf("%d reads at the poll interval, want 1", n)
		}
		if up.Calls() != 0 {
			t.Errorf("a waiter fetched while another instance held the lock")
		}
	})
}

// TestBackoffSteps: a failing upstream is called once per backoff step by
// the whole cluster, however many instances and callers ask. After
// ResetBackoff on one instance, another fetches within its RetryInterval,
// and the others take that token without fetching.
func TestBackoffSteps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		start := time.Now()
		var mu sync.Mutex
		var calls []time.Duration // since start
		var fail atomic.Bool
		fail.Store(true)
		up := tokentest.New(time.Hour)
		f := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
			mu.Lock()
			calls = append(calls, time.Since(start))
			mu.Unlock()
			if fail.Load() {
				return token.Token{}, errors.New("HTTP status 503")
			}
			return up.Fetch(ctx)
		})
		st := tokentest.NewStore()
		o := opts()
		o.BackoffPolicy = func(_ error, failures int) time.Duration { return time.Second << (failures - 1) } // 1s, 2s, 4s, ...
		var srcs []*token.Source
		for range 4 {
			srcs = append(srcs, newSource(t, f, st, o))
		}
		// 3 callers per instance, each calling every 10ms for 7.5s.
		const pace = 10 * time.Millisecond
		var wg sync.WaitGroup
		for _, s := range srcs {
			for range 3 {
				wg.Go(func() {
					for ; time.Since(start) < 7500*time.Millisecond; time.Sleep(pace) {
						if _, err := s.Token(ctx); err == nil {
							t.Error("a failing upstream gave a token")
							return
						}
					}
				})
			}
		}
		wg.Wait()
		mu.Lock()
		got := calls
		mu.Unlock()
		t.Logf("upstream called at %v", got)
		want := []time.Duration{0, time.Second, 3 * time.Second, 7 * time.Second}
		ok := len(got) == len(want)
		for i := 0; ok && i < len(got); i++ {
			ok = got[i] >= want[i] && got[i] <= want[i]+pace
		}
		if !ok {
			t.Fatalf("upstream called at %v, want at %v (within a caller's pace)", got, want)
		}

		fail.Store(false) // the upstream is back
		if err := srcs[0].ResetBackoff(ctx); err != nil {
			t.Fatal(err)
		}
		reset := time.Now()
		var tok token.Token
		if !scenario.Retry(o.RetryInterval+time.Second, pace, func() bool {
			var err error
			tok, err = srcs[1].Token(ctx)
			return err == nil
		}) {
			t.Fatal("another instance still backs off a second past its RetryInterval")
		}
		if waited := time.Since(reset); waited > 1*time.Second { // RetryInterval's default
			t.Errorf("another instance fetched %v after the reset, want within its RetryInterval", waited)
		}
		for _, s := range srcs {
			if got, err := s.Token(ctx); err != nil || got.Value != tok.Value {
				t.Errorf("after the reset: %v, %v; want the one new token", got, err)
			}
		}
		if n := up.Calls(); n != 1 {
			t.Errorf("%d fetches after the reset, want 1", n)
		}
	})
}

// TestRetryInterval: after a store failure, callers with no valid token get
// the store's error without new store calls until RetryInterval has passed,
// even if the store is back meanwhile; the first call after it succeeds.
func TestRetryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		up := tokentest.New(time.Hour)
		st := tokentest.NewStore()
		st.SetDown(true)
		o := opts()
		o.RetryInterval = time.Second
		s := newSource(t, up, st, o)
		if _, err := s.Token(ctx); !errors.Is(err, token.ErrStoreUnavailable) {
			t.Fatalf("err = %v, want ErrStoreUnavailable", err)
		}
		failed, calls := time.Now(), st.Calls()
		// A caller every 10ms; the store comes back halfway.
		for time.Sleep(10 * time.Millisecond); time.Since(failed) < o.RetryInterval; time.Sleep(10 * time.Millisecond) {
			if time.Since(failed) >= o.RetryInterval/2 {
				st.SetDown(false)
			}
			if _, err := s.Token(ctx); !errors.Is(err, token.ErrStoreUnavailable) {
				t.Fatalf("%v after the failure: %v, want the store's error again", time.Since(failed), err)
			}
		}
		if n := st.Calls() - calls; n != 0 {
			t.Errorf("%d store calls within RetryInterval of the failure, want 0", n)
		}
		if tok, err := s.Token(ctx); err != nil || !up.Valid(tok.Value) {
			t.Fatalf("RetryInterval after the failure: %v, %v; want a token", tok, err)
		}
		if up.Calls() != 1 {
			t.Errorf("upstream calls = %d, want 1", up.Calls())
		}
	})
}
