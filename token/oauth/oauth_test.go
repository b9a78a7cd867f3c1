package oauth_test

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/oauth"
	"github.com/tokencache/tokencache/token/oauth/oauthtest"
	"github.com/tokencache/tokencache/token/tokentest"
)

var quiet = slog.New(slog.DiscardHandler)

func ccConfig(srv *oauthtest.Server) *clientcredentials.Config {
	return &clientcredentials.Config{ClientID: "client", ClientSecret: "secret", TokenURL: srv.TokenURL(), Scopes: []string{"read"}, AuthStyle: oauth2.AuthStyleInHeader}
}

// sources returns n Sources of one credential sharing an in-memory store.
func sources(t *testing.T, f token.Fetcher, n int) []*token.Source {
	t.Helper()
	st := tokentest.NewStore()
	var srcs []*token.Source
	for range n {
		s, err := token.NewSource("c", f, st, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		srcs = append(srcs, s)
	}
	return srcs
}

// TestClientCredentialsShared: 4 instances × 16 goroutines over one token
// endpoint get one token: one request to the endpoint.
func TestClientCredentialsShared(t *testing.T) {
	srv := oauthtest.NewServer(oauthtest.Options{})
	defer srv.Close()
	srcs := sources(t, &oauth.ClientCredentials{Config: ccConfig(srv)}, 4)
	var wg sync.WaitGroup
	var bad atomic.Int32
	for _, s := range srcs {
		for range 16 {
			wg.Go(func() {
				tok, err := oauth.TokenSource(s, time.Second).Token()
				if err != nil || !srv.Valid(tok.AccessToken) || tok.TokenType != "Bearer" {
					bad.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if n := srv.Grants("client_credentials"); n != 1 || bad.Load() != 0 {
		t.Errorf("%d requests to the token endpoint (want 1), %d bad tokens", n, bad.Load())
	}
}

// TestEndpointErrors: what the token endpoint refuses becomes an *Error
// with the right class, a Retry-After is honoured, and no message holds the
// client secret or the reply's description.
func TestEndpointErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		fail      oauthtest.Failure
		permanent bool
		wait      time.Duration
	}{
		{"invalid_client", oauthtest.Failure{Status: 401, Code: "invalid_client"}, true, 0},
		{"invalid_scope", oauthtest.Failure{Status: 400, Code: "invalid_scope"}, true, 0},
		{"unauthorized_client", oauthtest.Failure{Status: 400, Code: "unauthorized_client"}, true, 0},
		{"invalid_grant", oauthtest.Failure{Status: 400, Code: "invalid_grant"}, true, 0},
		{"429", oauthtest.Failure{Status: 429, RetryAfter: "7"}, false, 7 * time.Second},
		{"503", oauthtest.Failure{Status: 503, RetryAfter: "86400"}, false, oauth.MaxRetryAfter},
		{"500", oauthtest.Failure{Status: 500}, false, 0},
		{"hostile code", oauthtest.Failure{Status: 400, Code: "bad\ncode"}, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := oauthtest.NewServer(oauthtest.Options{})
			defer srv.Close()
			srv.FailNext(tc.fail)
			_, err := (&oauth.ClientCredentials{Config: ccConfig(srv)}).Fetch(t.Context())
			var e *oauth.Error
			if !errors.As(err, &e) {
				t.Fatalf("%v: want an *oauth.Error", err)
			}
			if e.Permanent() != tc.permanent || e.RetryAfter() != tc.wait || e.Status != tc.fail.Status {
				t.Errorf("%v: permanent %v, retry after %v, status %d; want %v, %v, %d", err, e.Permanent(), e.RetryAfter(), e.Status, tc.permanent, tc.wait, tc.fail.Status)
			}
			if errors.Is(err, token.ErrRefreshRevoked) {
				t.Errorf("a client credentials error matches ErrRefreshRevoked")
			}
			if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "oauthtest") {
				t.Errorf("message holds the secret or the reply's description: %q", err)
			}
			if tc.wait > 0 {
				if d := token.DefaultBackoffPolicy(err, 1); d != tc.wait {
					t.Errorf("DefaultBackoffPolicy = %v, want the Retry-After %v", d, tc.wait)
				}
			}
		})
	}
}

// TestSameTokenStops: an endpoint (or a caching TokenSource behind a
// Config) that answers with the token it gave before does not make the
// Source fetch in a loop: the fetch fails with ErrSameToken.
func TestSameTokenStops(t *testing.T) {
	srv := oauthtest.NewServer(oauthtest.Options{})
	defer srv.Close()
	f := &oauth.ClientCredentials{Config: ccConfig(srv)}
	first, err := f.Fetch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The same endpoint reply again, as a caching proxy would give.
	g := &oauth.ClientCredentials{Config: &clientcredentials.Config{TokenURL: srv.TokenURL(), ClientID: "client", ClientSecret: "secret"},
		HTTPClient: &http.Client{Transport: replay{first.Value}}}
	if _, err := g.Fetch(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Fetch(t.Context()); !errors.Is(err, oauth.ErrSameToken) {
		t.Errorf("second fetch of the same token: %v, want ErrSameToken", err)
	}
}

// replay answers every token request with one access token.
type replay struct{ value string }

func (r replay) RoundTrip(req *http.Request) (*http.Response, error) {
	body := `{"access_token":"` + r.value + `","token_type":"Bearer","expires_in":3600}`
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: readCloser(body), Request: req}, nil
}

// TestNoExpiry: a reply without expires_in is an error, unless
// DefaultLifetime says how long such a token lives.
func TestNoExpiry(t *testing.T) {
	hc := &http.Client{Transport: noExpiry{}}
	f := &oauth.ClientCredentials{Config: &clientcredentials.Config{TokenURL: "http://token.invalid/token", ClientID: "c"}, HTTPClient: hc}
	if _, err := f.Fetch(t.Context()); !errors.Is(err, oauth.ErrNoExpiry) {
		t.Errorf("no expires_in: %v, want ErrNoExpiry", err)
	}
	f = &oauth.ClientCredentials{Config: f.Config, HTTPClient: hc, DefaultLifetime: time.Minute}
	tok, err := f.Fetch(t.Context())
	if err != nil || time.Until(tok.ExpiresAt) > time.Minute || time.Until(tok.ExpiresAt) < 50*time.Second {
		t.Errorf("with DefaultLifetime: %v, %v", tok, err)
	}
}

type noExpiry struct{}

var noExpiryN atomic.Int64

func (noExpiry) RoundTrip(req *http.Request) (*http.Response, error) {
	body := `{"access_token":"t` + string(rune('a'+noExpiryN.Add(1)%26)) + `","token_type":"Bearer"}`
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: readCloser(body), Request: req}, nil
}

func readCloser(s string) *strBody { return &strBody{Reader: strings.NewReader(s)} }

type strBody struct{ *strings.Reader }

func (*strBody) Close() error { return nil }

// TestNames: names differ by client, scopes and parameters, not by the
// order of scopes or the secret, and are valid credential names.
func TestNames(t *testing.T) {
	base := clientcredentials.Config{ClientID: "a", ClientSecret: "s1", TokenURL: "https://idp/token", Scopes: []string{"x", "y"}}
	same := base
	same.Scopes, same.ClientSecret = []string{"y", "x", "x"}, "s2"
	other := base
	other.Scopes = []string{"x"}
	client := base
	client.ClientID = "b"
	params := base
	params.EndpointParams = map[string][]string{"audience": {"api"}}
	n := oauth.Name(&base)
	if oauth.Name(&same) != n {
		t.Errorf("scope order or secret changed the name")
	}
	for _, c := range []*clientcredentials.Config{&other, &client, &params} {
		if oauth.Name(c) == n {
			t.Errorf("%+v shares a name with %+v", c, base)
		}
	}
	if len(n) > 100 || strings.ContainsAny(n, "{} \t\n") {
		t.Errorf("name %q is not a valid credential name", n)
	}
	u := &oauth2.Config{ClientID: "a", Endpoint: oauth2.Endpoint{TokenURL: "https://idp/token"}}
	if oauth.UserName(u, "alice") == oauth.UserName(u, "bob") {
		t.Errorf("two users share a name")
	}
}
