package token_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestReviewSupersededEntryHammersFailingStore: a Refreshed event marks the
// entry superseded; if the store then fails reads, every Token call starts a
// new refresh (one store round trip per call), unlike an entry in its
// refresh-ahead window, which is retried once per RetryInterval.
func TestReviewSupersededEntryHammersFailingStore(t *testing.T) {
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

	// Another instance saved a newer token, then the store became
	// unreachable from here.
	st.SetDown(true)
	st.Notify(token.Event{Kind: token.Refreshed, Version: sh.Version + 1})

	before := st.Calls()
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for time.Since(start) < 500*time.Millisecond {
				got, err := s.Token(ctx)
				if err != nil || got.Value != tok.Value {
					t.Errorf("Token = %v, %v", got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	calls := st.Calls() - before
	t.Logf("store calls in 500ms with RetryInterval=1s: %d", calls)
	if calls > 3 {
		t.Errorf("%d store calls in 0.5s while the store fails; want at most ~1 per RetryInterval", calls)
	}
}
