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
	up := tokentest.New(time.Hour)
	up.FailNext(nil, nil, nil)
	s := backingOff(t, up, tokentest.NewStore())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Token(context.Background())
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
