package token_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestTokenAfterCloseWithBackoff: a Source that knows of a shared backoff
// answers ErrClosed after Close, not the backoff error it remembered.
func TestTokenAfterCloseWithBackoff(t *testing.T) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	up.FailNext(nil, nil, nil)
	st := tokentest.NewStore()
	o := opts()
	o.BackoffPolicy = func(error, int) time.Duration { return time.Minute }
	s := newSource(t, up, st, o)

	if _, err := s.Token(ctx); err == nil {
		t.Fatal("the failing fetch succeeded")
	}
	if _, err := s.Token(ctx); !errors.Is(err, token.ErrUpstreamBackoff) {
		t.Fatalf("during the backoff: %v, want ErrUpstreamBackoff", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Token(ctx)
	if !errors.Is(err, token.ErrClosed) {
		t.Errorf("Token after Close during a backoff: %v, want ErrClosed", err)
	}
	if errors.Is(err, token.ErrUpstreamBackoff) {
		t.Errorf("Token after Close during a backoff: %v matches ErrUpstreamBackoff", err)
	}
	if n := up.Calls(); n != 1 {
		t.Errorf("upstream calls = %d, want 1", n)
	}
}
