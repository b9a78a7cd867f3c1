package token_test

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestReviewForgedFloodStarvesCallers: a steady stream of forged events
// (never confirmed by the store) fetches nothing, but every event marks the
// near-cached token dead until the next read, so callers wait for reads
// that are outdated by the time they finish: Token keeps failing with
// its context's deadline while the store holds a perfectly good token.
func TestReviewForgedFloodStarvesCallers(t *testing.T) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	s := newSource(t, up, st, opts())
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	loads := st.Loads()
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { // ~20k forged invalidations a second
		defer close(done)
		for !stop.Load() {
			st.Notify(token.Event{Kind: token.Invalidated, Version: 1 << 62})
			runtime.Gosched()
		}
	}()
	ok, failed := 0, 0
	start := time.Now()
	for time.Since(start) < time.Second {
		c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := s.Token(c)
		cancel()
		if err != nil {
			failed++
		} else {
			ok++
		}
	}
	stop.Store(true)
	<-done
	t.Logf("during the flood: %d Token calls ok, %d failed; %d store reads; %d fetches", ok, failed, st.Loads()-loads, up.Issued())
	if failed > 0 {
		t.Errorf("%d of %d Token calls failed while the store held a valid token", failed, ok+failed)
	}
}
