package oauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/oauth"
	"github.com/tokencache/tokencache/token/tokentest"
)

// rotatingEndpoint is a token endpoint that rotates refresh tokens (rt-1,
// rt-2, ...) and replies with accessFor(n) and, if withExpiry, expires_in.
type rotatingEndpoint struct {
	mu         sync.Mutex
	current    int
	reused     int
	withExpiry bool
	accessFor  func(n int) string
}

func (e *rotatingEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	e.mu.Lock()
	defer e.mu.Unlock()
	if r.PostForm.Get("refresh_token") != fmt.Sprintf("rt-%d", e.current) {
		e.reused++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
		return
	}
	e.current++
	reply := map[string]any{"access_token": e.accessFor(e.current), "token_type": "Bearer",
		"refresh_token": fmt.Sprintf("rt-%d", e.current)}
	if e.withExpiry {
		reply["expires_in"] = 3600
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(reply)
}

// TestReviewRefresherKeepsRotatedStateOfUnusableToken: an endpoint that
// rotates the refresh token but whose access token the Refresher refuses
// (no expires_in without DefaultLifetime: ErrNoExpiry; or the previous
// access token again: ErrSameToken) has replaced the state all the same.
// The Refresher returned next = "" with its error, so the Source kept the
// replaced refresh token: the next redemption resends it, which a rotating
// endpoint takes as reuse and refuses (the family is revoked). The core
// commits a rotated state even when the token is unusable (e5f740b); the
// Refresher drops it before the core sees it.
func TestReviewRefresherKeepsRotatedStateOfUnusableToken(t *testing.T) {
	cases := map[string]*rotatingEndpoint{
		"no expires_in":     {current: 1, accessFor: func(n int) string { return fmt.Sprintf("at-%d", n) }},
		"same access token": {current: 1, withExpiry: true, accessFor: func(int) string { return "at-same" }},
	}
	for name, ep := range cases {
		t.Run(name, func(t *testing.T) {
			hs := httptest.NewServer(ep)
			defer hs.Close()
			cfg := &oauth2.Config{ClientID: "client", ClientSecret: "secret",
				Endpoint: oauth2.Endpoint{TokenURL: hs.URL, AuthStyle: oauth2.AuthStyleInHeader}}
			r := &oauth.Refresher{Config: cfg}
			st := tokentest.NewStore()
			s, err := token.NewSource("u", r, st, st, token.Options{Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			if err := s.SeedRefresh(ctx, "rt-1"); err != nil {
				t.Fatal(err)
			}
			if ep.withExpiry {
				// A first good token, then the same access token again.
				if _, err := s.Token(ctx); err != nil {
					t.Fatal(err)
				}
				tok, _ := s.Token(ctx)
				_ = s.Invalidate(ctx, tok.Value)
			}
			_, err = s.Token(ctx)
			t.Logf("Token: %v", err)
			if !errors.Is(err, oauth.ErrNoExpiry) && !errors.Is(err, oauth.ErrSameToken) {
				t.Fatalf("Token: %v, want ErrNoExpiry or ErrSameToken", err)
			}
			ep.mu.Lock()
			want := fmt.Sprintf("rt-%d", ep.current)
			ep.mu.Unlock()
			st2, err := st.LoadRefresh(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st2.Value != want {
				t.Errorf("stored refresh state %q, but the endpoint replaced it with %q: the next redemption resends a spent refresh token", st2.Value, want)
			}
		})
	}
}

// TestReviewTransportInvalidatesWithoutReplay: a 401 invalid_token to a
// request whose body cannot be replayed is returned as is (documented), but
// the token it names is known bad all the same: unless it is invalidated,
// every later request (on every instance) is sent with it until it expires.
func TestReviewTransportInvalidatesWithoutReplay(t *testing.T) {
	api := &scripted{status: []int{401, 200}, header: `Bearer error="invalid_token"`}
	toks := &rotatingTokens{cur: "t1"}
	c := &http.Client{Transport: &oauth.Transport{Tokens: toks, Base: api}}
	req, err := http.NewRequest(http.MethodPost, "http://api.invalid/x", io.MultiReader(strings.NewReader("payload")))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || len(api.auth) != 1 {
		t.Fatalf("status %d after %d sends, want the 401, sent once", resp.StatusCode, len(api.auth))
	}
	resp, err = c.Get("http://api.invalid/y")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if api.auth[1] != "Bearer t2" {
		t.Errorf("next request sent with %q, want the rejected token replaced (invalidated: %q)", api.auth[1], toks.invalidated)
	}
}

// TestReviewRefresherAutoDetectResends: with Endpoint.AuthStyle left at
// its zero value (AuthStyleAutoDetect), x/oauth2 sends a request that
// failed in any way a second time with the client credentials moved. For a
// refresh token that is a second redemption of the same token: an endpoint
// that acted on the first (and then failed: a 5xx, a reset connection)
// takes the second as reuse and revokes the family. The README says to
// set AuthStyle because refused requests cost two; nothing stops a
// Refresher from redeeming one state twice without it.
func TestReviewRefresherAutoDetectResends(t *testing.T) {
	var mu sync.Mutex
	sent := map[string]int{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		sent[r.PostForm.Get("refresh_token")]++
		mu.Unlock()
		// Redeemed, then the reply fails.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"error":"server_error"}`))
	}))
	defer hs.Close()
	cfg := &oauth2.Config{ClientID: "client-autodetect", ClientSecret: "secret", Endpoint: oauth2.Endpoint{TokenURL: hs.URL}}
	st := tokentest.NewStore()
	s, err := token.NewSource("u", &oauth.Refresher{Config: cfg}, st, st, token.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.SeedRefresh(ctx, "rt-1"); err != nil {
		t.Fatal(err)
	}
	_, err = s.Token(ctx)
	t.Logf("Token: %v", err)
	mu.Lock()
	defer mu.Unlock()
	if !errors.Is(err, token.ErrInvalidConfig) && sent["rt-1"] == 0 {
		t.Errorf("Token: %v, want ErrInvalidConfig or a redemption", err)
	}
	if sent["rt-1"] > 1 {
		t.Errorf("refresh token sent %d times by one redemption", sent["rt-1"])
	}
}

// TestReviewTransportChallengeList: RFC 9110 section 11.6.1 lets one
// WWW-Authenticate field carry several challenges, comma-separated. A
// Bearer challenge after another scheme's ("Basic realm=..., Bearer
// error=...", or DPoP beside Bearer) was not recognised, so the rejected
// token was neither invalidated nor the request retried; and a BWS around
// "=" (allowed by the grammar) hid the error parameter.
func TestReviewTransportChallengeList(t *testing.T) {
	for _, h := range []string{
		`Basic realm="api", Bearer error="invalid_token"`,
		`DPoP algs="ES256 PS256", Bearer realm="api", error="invalid_token"`,
		`Negotiate, Bearer error="invalid_token"`,
		`Bearer realm="api", error = "invalid_token"`,
	} {
		api := &scripted{status: []int{401, 200}, header: h}
		toks := &rotatingTokens{cur: "t1"}
		c := &http.Client{Transport: &oauth.Transport{Tokens: toks, Base: api}}
		resp, err := c.Get("http://api.invalid/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || len(toks.invalidated) != 1 {
			t.Errorf("WWW-Authenticate: %s: status %d, invalidated %q; want t1 invalidated and the retry's 200", h, resp.StatusCode, toks.invalidated)
		}
	}
}
