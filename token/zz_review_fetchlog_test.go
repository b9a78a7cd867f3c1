package token_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestReviewTooManyFetchesOutlastsTenMinutes: MaxFetchesPerLifetime's doc says
// the next fetch waits "until the oldest of them is a lifetime old (10
// minutes at most)". With a 1 h token and 5 Invalidate-driven fetches, the
// backoff is capped at 10 minutes, but when it is over the guard refuses
// again (oldest fetch still within the lifetime) and records another
// backoff: no fetch until the oldest fetch is a whole lifetime old.
func TestReviewTooManyFetchesOutlastsTenMinutes(t *testing.T) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	s := newSource(t, up, st, opts())

	tok, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ { // 4 legitimate Invalidates: 5 fetches in all
		if err := s.Invalidate(ctx, tok.Value); err != nil {
			t.Fatal(err)
		}
		if tok, err = s.Token(ctx); err != nil {
			t.Fatalf("Token after Invalidate %d: %v", i+1, err)
		}
	}
	if err := s.Invalidate(ctx, tok.Value); err != nil {
		t.Fatal(err)
	}
	_, err = s.Token(ctx)
	var be *token.BackoffError
	if !errors.Is(err, token.ErrTooManyFetches) || !errors.As(err, &be) {
		t.Fatalf("6th fetch: %v, want ErrTooManyFetches", err)
	}
	t.Logf("6th fetch refused: %v", err)

	// Ten minutes later: the shared backoff is over. Emulate it by clearing
	// the shared record, and the local one (any Refreshed event clears it).
	_ = st.SaveBackoff(ctx, token.Backoff{})
	st.Notify(token.Event{Kind: token.Refreshed, Version: 1 << 40}) // clamped at the next read
	issued := up.Issued()
	_, err = s.Token(ctx)
	t.Logf("after the 10-minute backoff: err=%v, fetches=%d", err, up.Issued()-issued)
	if errors.Is(err, token.ErrTooManyFetches) {
		b, _ := st.LoadBackoff(ctx)
		t.Errorf("after the capped backoff ended, the Source refused again and recorded a new shared backoff of %v (Failures=%d): no token until the oldest fetch is a lifetime (1h) old", b.Remaining.Round(time.Second), b.Failures)
	}
}
