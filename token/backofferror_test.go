package token_test

import (
	"testing"

	"github.com/tokencache/tokencache/token"
)

// TestBackoffErrorPermanent: an instance that learned of a failure only
// from the shared record (no cause of its own) still says whether it was
// permanent, by its class.
func TestBackoffErrorPermanent(t *testing.T) {
	for _, tc := range []struct {
		class string
		want  bool
	}{
		{token.ClassPermanent, true},
		{token.ClassRefreshRevoked, true},
		{token.ClassNoRefreshState, true},
		{token.ClassPanic, true},
		{token.ClassTemporary, false},
		{token.ClassTimeout, false},
		{token.ClassTooManyFetches, false},
		{"unknown-class", false},
	} {
		e := &token.BackoffError{Class: tc.class}
		if e.Permanent() != tc.want {
			t.Errorf("class %s: Permanent() = %v, want %v", tc.class, e.Permanent(), tc.want)
		}
	}
}
