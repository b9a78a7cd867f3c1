package wechat_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
	"github.com/tokencache/tokencache/token/wechat"
)

type fixedComponent struct{}

func (fixedComponent) Token(context.Context) (token.Token, error) {
	return token.Token{Value: "component-token", ExpiresAt: time.Now().Add(time.Hour)}, nil
}
func (fixedComponent) Invalidate(context.Context, string) error { return nil }

// TestReviewAuthorizerKeepsRotatedStateOfBadReply: a redemption reply
// whose authorizer_access_token cannot be used (expires_in missing or out
// of range) but which carries a new authorizer_refresh_token has replaced
// the refresh token all the same: the Source must commit it, as the core
// does for an unusable token. parseAuthorizerReply returns next = "" with
// the error, so the spent refresh token stays stored and is sent again.
func TestReviewAuthorizerKeepsRotatedStateOfBadReply(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"authorizer_access_token": "at-1", "expires_in": 0, "authorizer_refresh_token": "rt-2",
		})
	}))
	defer hs.Close()
	f := &wechat.AuthorizerFetcher{Component: fixedComponent{}, ComponentAppID: "wxc", AuthorizerAppID: "wxa", BaseURL: hs.URL}
	st := tokentest.NewStore()
	s, err := token.NewSource("a", f, st, st, token.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.SeedRefresh(ctx, "rt-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token(ctx); err == nil {
		t.Fatal("Token succeeded with expires_in 0")
	}
	rs, err := st.LoadRefresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Value != "rt-2" {
		t.Errorf("stored refresh token %q, want the one the reply replaced it with, rt-2", rs.Value)
	}
}
