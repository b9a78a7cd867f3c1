package token_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// recorder keeps every hook call, printed with %#v.
type recorder struct {
	mu    sync.Mutex
	calls []string
	kinds map[string]int
}

func (r *recorder) add(kind string, v any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.kinds == nil {
		r.kinds = map[string]int{}
	}
	r.kinds[kind]++
	r.calls = append(r.calls, fmt.Sprintf("%s %#v", kind, v))
}

func (r *recorder) count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.kinds[kind]
}

// with returns the calls of kind whose text contains every one of subs.
func (r *recorder) with(kind string, subs ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
next:
	for _, c := range r.calls {
		if !strings.HasPrefix(c, kind+" ") {
			continue
		}
		for _, s := range subs {
			if !strings.Contains(c, s) {
				continue next
			}
		}
		n++
	}
	return n
}

func (r *recorder) hooks() token.Hooks {
	return token.Hooks{
		FetchStart:  func(i token.FetchStartInfo) { r.add("FetchStart", i) },
		FetchDone:   func(i token.FetchDoneInfo) { r.add("FetchDone", i) },
		WaitDone:    func(i token.WaitDoneInfo) { r.add("WaitDone", i) },
		Invalidated: func(i token.InvalidateInfo) { r.add("Invalidated", i) },
		StoreError:  func(i token.StoreErrorInfo) { r.add("StoreError", i) },
		Backoff:     func(i token.BackoffInfo) { r.add("Backoff", i) },
		LockLost:    func(i token.LockLostInfo) { r.add("LockLost", i) },
	}
}

// TestHooksScripted: a scripted run (fetches, invalidations, a failure and
// its backoff, a lost lock, a store outage) calls each hook as often as it
// should, with the outcome it should.
func TestHooksScripted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.New(10 * time.Second)
		st := tokentest.NewStore()
		r := &recorder{}
		newSource := func(l token.Locker) *token.Source {
			s, err := token.NewSource("c", up, st, l, token.Options{Logger: quiet, Hooks: r.hooks()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			return s
		}
		a, b := newSource(st), newSource(st)
		ctx := context.Background()
		tok, err := a.Token(ctx) // fetch 1
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Invalidate(ctx, tok.Value); err != nil { // removed
			t.Fatal(err)
		}
		if err := b.Invalidate(ctx, tok.Value); err != nil { // b never had it: stale
			t.Fatal(err)
		}
		if _, err := a.Token(ctx); err != nil { // fetch 2
			t.Fatal(err)
		}
		up.FailNext(errors.New("upstream down"))
		tok, _ = a.Token(ctx)
		_ = a.Invalidate(ctx, tok.Value)
		if _, err := a.Token(ctx); err == nil { // fetch 3 fails: backoff
			t.Fatal("want the injected failure")
		}
		time.Sleep(2 * time.Second)
		if _, err := a.Token(ctx); err != nil { // backoff over: fetch 4
			t.Fatal(err)
		}
		synctest.Wait()
		checkHooks(t, r, map[string]int{"FetchStart": 4, "FetchDone": 4, "Invalidated": 3, "Backoff": 2, "LockLost": 0, "StoreError": 0})
		if n := r.with("Invalidated", "Removed:true"); n < 1 || n > 2 {
			t.Errorf("%d invalidations removed, want 1 or 2", n)
		}
		if n := r.with("WaitDone", `Outcome:"error"`) + r.with("WaitDone", `Outcome:"backoff"`); n < 1 {
			t.Errorf("the failed refresh was not reported to its caller")
		}
		for _, want := range []struct {
			kind string
			subs []string
			n    int
		}{
			{"FetchDone", []string{`Outcome:"ok"`}, 3},
			{"FetchDone", []string{`Outcome:"error"`, `Class:"temporary"`}, 1},
			{"FetchDone", []string{"Reason:0x3"}, 0}, // sanity: reasons print as names below
			// The second invalidation's own refresh may replace the
			// token before the store is told: removed or stale.
			{"Invalidated", []string{"Removed:false"}, -1},
			{"Backoff", []string{"Active:true", `Class:"temporary"`}, 1},
			{"Backoff", []string{"Active:false"}, 1},
			// The failed refresh is met as its error or, if the
			// background refresh failed first, as the backoff after it.
			{"WaitDone", []string{`Outcome:"error"`}, -1},
		} {
			if n := r.with(want.kind, want.subs...); want.n >= 0 && n != want.n {
				t.Errorf("%s with %v: %d calls, want %d", want.kind, want.subs, n, want.n)
			}
		}

	})
}

// TestHooksLockLostAndStoreError: a lock lost mid-fetch and a store outage
// are reported.
func TestHooksLockLostAndStoreError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.New(time.Hour)
		st := tokentest.NewStore()
		r := &recorder{}
		l := &losingLocker{st: st, start: make(chan struct{})}
		c, err := token.NewSource("c", up, st, l, token.Options{Logger: quiet, Hooks: r.hooks()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx := context.Background()
		entered, release := up.Hold()
		done := make(chan error)
		go func() { _, err := c.Token(ctx); done <- err }()
		<-entered
		close(l.start) // the lock is lost mid-fetch
		synctest.Wait()
		release()
		<-done
		st.SetDown(true)
		_ = c.Invalidate(ctx, tokOf(t, c))
		_, _ = c.Token(ctx)
		st.SetDown(false)
		synctest.Wait()
		if r.count("LockLost") != 1 || r.with("StoreError", `Credential:"c"`) == 0 {
			t.Errorf("LockLost %d (want 1), StoreError %d (want some)", r.count("LockLost"), r.count("StoreError"))
		}
	})
}

// tokOf returns s's token, failing the test on an error.
func tokOf(t *testing.T, s *token.Source) string {
	t.Helper()
	tok, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok.Value
}

func checkHooks(t *testing.T, r *recorder, want map[string]int) {
	t.Helper()
	for kind, n := range want {
		if got := r.count(kind); got != n {
			t.Errorf("%s: %d calls, want %d", kind, got, n)
		}
	}
}

// TestHooksNeverSeeTokens: in a load test with invalidations and failures,
// no hook argument holds any token the upstream issued.
func TestHooksNeverSeeTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.New(2 * time.Second)
		st := tokentest.NewStore()
		r := &recorder{}
		var srcs []*token.Source
		for range 4 {
			s, err := token.NewSource("c", up, st, st, token.Options{Logger: quiet, Hooks: r.hooks()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			srcs = append(srcs, s)
		}
		var wg sync.WaitGroup
		for i, s := range srcs {
			for j := range 8 {
				wg.Go(func() {
					for k := 0; k < 200; k++ {
						tok, err := s.Token(context.Background())
						if err == nil && (i+j+k)%17 == 0 {
							_ = s.Invalidate(context.Background(), tok.Value)
						}
						if (i+j+k)%50 == 0 {
							up.FailNext(errors.New("upstream down"))
						}
						time.Sleep(50 * time.Millisecond)
					}
				})
			}
		}
		wg.Wait()
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Logf("%d hook calls, %d tokens issued", len(r.calls), len(up.Tokens()))
		if r.kinds["FetchDone"] == 0 || r.kinds["Invalidated"] == 0 {
			t.Fatalf("the load did not exercise the hooks: %v", r.kinds)
		}
		for _, v := range up.Tokens() {
			for _, c := range r.calls {
				if strings.Contains(c, v) || strings.Contains(c, v[:12]) {
					t.Fatalf("a hook saw a token: %s", c)
				}
			}
		}
	})
}
