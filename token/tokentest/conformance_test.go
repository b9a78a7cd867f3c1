package tokentest_test

import (
	"testing"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestStoreConformance runs the conformance suite on the in-memory Store.
// Instances share a Store by pointer, so every handle is the same Store. It
// has no raw representation to corrupt and its lock never expires, so those
// subtests are skipped.
func TestStoreConformance(t *testing.T) {
	tokentest.TestStore(t, tokentest.StoreHarness{
		New: func(t *testing.T) tokentest.Credential {
			st := tokentest.NewStore()
			return tokentest.Credential{Open: func() token.Store { return st }}
		},
	})
}
