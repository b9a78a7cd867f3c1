package oauth_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/oauth"
	"github.com/tokencache/tokencache/token/oauth/oauthtest"
	"github.com/tokencache/tokencache/token/tokentest"
)

func userConfig(srv *oauthtest.Server) *oauth2.Config {
	return &oauth2.Config{ClientID: "client", ClientSecret: "secret",
		Endpoint: oauth2.Endpoint{TokenURL: srv.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader}}
}

// TestRefresherRotates: 4 instances × 8 goroutines of one user's
// credential, over several refresh periods of 2 s tokens, redeem each
// refresh token once: no family revoked, every token valid.
func TestRefresherRotates(t *testing.T) {
	srv := oauthtest.NewServer(oauthtest.Options{Lifetime: 2 * time.Second})
	defer srv.Close()
	st := tokentest.NewStore()
	r := &oauth.Refresher{Config: userConfig(srv)}
	var srcs []*token.Source
	for range 4 {
		s, err := token.NewSource(oauth.UserName(r.Config, "alice"), r, st, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		srcs = append(srcs, s)
	}
	ctx := context.Background()
	if err := srcs[0].SeedRefresh(ctx, srv.Authorize()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad int
	for _, s := range srcs {
		for range 8 {
			wg.Go(func() {
				for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(20 * time.Millisecond) {
					tok, err := s.Token(ctx)
					if err != nil || !srv.Valid(tok.Value) {
						mu.Lock()
						bad++
						mu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	n := srv.Grants("refresh_token")
	t.Logf("4 instances × 8 goroutines, 5 s of 2 s tokens: %d refreshes, %d revocations, %d bad tokens", n, srv.Revocations(), bad)
	// Refresh ahead at 1.6 s (the window is at least 1 s, at most half):
	// one at the start, then one per second or so.
	if srv.Revocations() != 0 || bad != 0 || n > 7 {
		t.Errorf("want 0 revocations, 0 bad tokens and at most 7 refreshes")
	}
}

// TestRefresherRevoked: a refresh token the endpoint refuses gives callers
// an error matching token.ErrRefreshRevoked, and is sent once.
func TestRefresherRevoked(t *testing.T) {
	srv := oauthtest.NewServer(oauthtest.Options{})
	defer srv.Close()
	st := tokentest.NewStore()
	s, err := token.NewSource("u", &oauth.Refresher{Config: userConfig(srv)}, st, st, token.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.SeedRefresh(ctx, "rt-unknown"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := s.Token(ctx); !errors.Is(err, token.ErrRefreshRevoked) {
			t.Errorf("Token: %v, want ErrRefreshRevoked", err)
		}
	}
	if n := srv.Grants("refresh_token"); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}
