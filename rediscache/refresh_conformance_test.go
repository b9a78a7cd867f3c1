package rediscache_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestRefreshConformance runs tokentest.TestRefreshStore on every backend,
// and on miniredis with the state sealed at rest.
func TestRefreshConformance(t *testing.T) {
	sealed := &rediscache.Keyring{Current: "k1", Keys: map[string][]byte{"k1": make([]byte, 32)}}
	redistest.ForEach(t, func(t *testing.T, b backend) {
		for _, enc := range []*rediscache.Keyring{nil, sealed} {
			if enc != nil && b.Mini == nil {
				continue
			}
			t.Run(fmt.Sprintf("sealed=%v", enc != nil), func(t *testing.T) {
				p := prefix(t)
				var n atomic.Int64
				h := tokentest.RefreshHarness{New: func(t *testing.T) tokentest.RefreshCredential {
					name := fmt.Sprintf("refresh:%d", n.Add(1))
					return tokentest.RefreshCredential{Open: func() token.RefreshStore {
						c, err := newCache(t, b.Client(t), rediscache.Options{Prefix: p, Encryption: enc, Source: token.Options{Logger: quiet}}).Credential(name)
						if err != nil {
							t.Fatal(err)
						}
						return c
					}}
				}}
				if b.Mini != nil {
					h.Advance = b.Mini.FastForward
				}
				tokentest.TestRefreshStore(t, h)
			})
		}
	})
}
