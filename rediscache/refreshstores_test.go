package rediscache_test

import (
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestRefreshStoresPerCredential: a Cache's credentials keep their refresh
// state apart in a separate store. One RefreshStore in Options.Source
// would be shared by every credential of the Cache (credential b redeemed
// a's state and served a's account): New refuses it.
func TestRefreshStoresPerCredential(t *testing.T) {
	mr := miniredis.RunT(t)
	stores := map[string]*tokentest.Store{"a": tokentest.NewStore(), "b": tokentest.NewStore()}
	c := newCache(t, newClient(t, mr.Addr()), rediscache.Options{
		Source: token.Options{Logger: quiet},
		RefreshStores: func(name string) (token.RefreshStore, error) {
			return stores[name], nil
		},
	})
	ctx := t.Context()
	for name, st := range stores {
		up := tokentest.NewRotating(time.Hour)
		src, err := c.Source(name, up)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = src.Close() })
		if err := src.SeedRefresh(ctx, up.Authorize()); err != nil {
			t.Fatal(err)
		}
		tok, err := src.Token(ctx)
		if err != nil || !up.Valid(tok.Value) {
			t.Fatalf("%s: %v, %v: want a token of its own upstream", name, tok, err)
		}
		if rs, err := st.LoadRefresh(ctx); err != nil || rs.Generation != 2 {
			t.Errorf("%s: its store holds generation %d (%v), want 2 (seeded, redeemed once)", name, rs.Generation, err)
		}
	}
	_, err := rediscache.New(newClient(t, mr.Addr()), rediscache.Options{Source: token.Options{RefreshStore: tokentest.NewStore()}})
	if !errors.Is(err, token.ErrInvalidConfig) {
		t.Errorf("New with one RefreshStore for every credential: %v, want ErrInvalidConfig", err)
	}
}
