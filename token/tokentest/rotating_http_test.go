package tokentest_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// A Rotating served over HTTP, redeemed by instances that would run in other
// processes.
func ExampleHTTPRedeemer() {
	server := tokentest.NewRotating(time.Hour)
	srv := httptest.NewServer(server)
	defer srv.Close()
	st := tokentest.NewStore() // rediscache.Cache.Credential across processes
	s, err := token.NewSource("authorizer", tokentest.HTTPRedeemer(srv.URL, nil), st, st, token.Options{})
	if err != nil {
		panic(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.SeedRefresh(ctx, server.Authorize()); err != nil {
		panic(err)
	}
	tok, err := s.Token(ctx)
	fmt.Println(server.Valid(tok.Value), err, server.Redemptions())
	// Output: true <nil> 1
}

// TestRotatingOverHTTP: each redemption rotates the refresh token; the
// replaced one is refused with an error matching token.ErrRefreshRevoked and
// revokes the family, unless within Grace, which answers the pair already
// issued.
func TestRotatingOverHTTP(t *testing.T) {
	for _, grace := range []time.Duration{0, time.Hour} {
		t.Run("grace "+grace.String(), func(t *testing.T) {
			up := tokentest.NewRotating(time.Minute)
			up.Grace = grace
			srv := httptest.NewServer(up)
			defer srv.Close()
			r := tokentest.HTTPRedeemer(srv.URL, srv.Client())
			ctx := context.Background()
			first := up.Authorize()
			tok, next, err := r.Redeem(ctx, first)
			if err != nil || next == "" || next == first || !up.Valid(tok.Value) {
				t.Fatalf("redeem: %v (rotated %v, valid %v)", err, next != first, up.Valid(tok.Value))
			}
			if left := time.Until(tok.ExpiresAt); left < 59*time.Second || left > time.Minute {
				t.Errorf("expires in %v, want a minute", left)
			}
			again, next2, err := r.Redeem(ctx, first) // reuse
			if grace > 0 {
				if err != nil || again != tok || next2 != next {
					t.Errorf("reuse within grace: %v, same pair %v", err, again == tok && next2 == next)
				}
				return
			}
			if !errors.Is(err, token.ErrRefreshRevoked) || up.Revocations() != 1 || up.Valid(tok.Value) {
				t.Errorf("reuse: %v, %d revocations, token still valid %v", err, up.Revocations(), up.Valid(tok.Value))
			}
			if _, _, err := r.Redeem(ctx, next); !errors.Is(err, token.ErrRefreshRevoked) {
				t.Errorf("the current token of a revoked family: %v", err)
			}
		})
	}
}

// TestRotatingHTTPRejects: malformed requests are refused without a
// redemption, and not as a revocation.
func TestRotatingHTTPRejects(t *testing.T) {
	up := tokentest.NewRotating(time.Minute)
	srv := httptest.NewServer(up)
	defer srv.Close()
	rt := up.Authorize()
	for _, c := range []struct {
		method, body string
		status       int
		code         string
	}{
		{http.MethodGet, "", http.StatusMethodNotAllowed, "invalid_request"},
		{http.MethodPost, url.Values{"grant_type": {"password"}, "refresh_token": {rt}}.Encode(), http.StatusBadRequest, "unsupported_grant_type"},
		{http.MethodPost, url.Values{"grant_type": {"refresh_token"}}.Encode(), http.StatusBadRequest, "invalid_request"},
		{http.MethodPost, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt-unknown"}}.Encode(), http.StatusBadRequest, "invalid_grant"},
	} {
		req, _ := http.NewRequest(c.method, srv.URL, strings.NewReader(c.body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, 256)
		n, _ := resp.Body.Read(body)
		resp.Body.Close()
		if resp.StatusCode != c.status || !strings.Contains(string(body[:n]), `"`+c.code+`"`) {
			t.Errorf("%s %q: %s %s, want %d %s", c.method, c.body, resp.Status, body[:n], c.status, c.code)
		}
	}
	if up.Redemptions() != 1 || up.Revocations() != 0 { // the unknown token only
		t.Errorf("%d redemptions, %d revocations; want 1, 0", up.Redemptions(), up.Revocations())
	}
	// A client gone during Latency still had its token rotated.
	slow := tokentest.NewRotating(time.Minute)
	slow.Latency = 200 * time.Millisecond
	ssrv := httptest.NewServer(slow)
	defer ssrv.Close()
	rt = slow.Authorize()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := tokentest.HTTPRedeemer(ssrv.URL, nil).Redeem(ctx, rt); err == nil {
		t.Fatal("answered within the latency")
	}
	if _, _, err := tokentest.HTTPRedeemer(ssrv.URL, nil).Redeem(context.Background(), rt); !errors.Is(err, token.ErrRefreshRevoked) {
		t.Errorf("the token redeemed by the client that went away: %v, want refused", err)
	}
}
