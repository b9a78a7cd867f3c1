package token_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestIdleShortLifetimeIsNotRefreshed: issue 11 item 3 with the
// 2 s tokens and 100 ms upstream of its quiet-service measurement, default
// Options (so the refresh-ahead window is MinRefreshAhead, 1 s: half the
// lifetime). "A credential used within its last lifetime is refreshed
// ahead; one idle for longer is not": one use may cause one refresh ahead,
// and no fetch may start once the credential has been idle for more than a
// lifetime.
//
// Uses are recorded at no hot-path cost as the start of the phase that held
// them, so the rule allows one phase of slack, at most a quarter of the
// lifetime. Before that cap the slack was the whole window (half the
// lifetime here), and one use at t=0 fetched again at 1.0 s, 2.1 s and 3.0 s.
func TestIdleShortLifetimeIsNotRefreshed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime = 2 * time.Second
		up := tokentest.New(lifetime)
		up.Latency = 100 * time.Millisecond
		var mu sync.Mutex
		var starts []time.Time
		f := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			return up.Fetch(ctx)
		})
		st := tokentest.NewStore()
		s, err := token.NewSource("c", f, st, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
		used := time.Now() // the only use
		time.Sleep(10 * lifetime)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		var after []time.Duration
		late := 0
		for _, at := range starts[1:] {
			d := at.Sub(used)
			after = append(after, d)
			if d > lifetime*5/4 {
				late++
			}
		}
		t.Logf("one use at t=0, lifetime %v: refreshes started at %v after it", lifetime, after)
		if len(after) > 2 {
			t.Errorf("%d refreshes after a single use, want at most 2 (the refresh-ahead points within the lifetime plus a quarter)", len(after))
		}
		if late > 0 {
			t.Errorf("%d fetches started more than a lifetime and a quarter (%v) after the last use, want 0", late, lifetime*5/4)
		}
	})
}
