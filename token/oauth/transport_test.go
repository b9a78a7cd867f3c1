package oauth_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/oauth"
	"github.com/tokencache/tokencache/token/oauth/oauthtest"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestTransport401Storm: the API revokes the cluster's token while 512
// goroutines on 4 instances call it: each request is answered 200, and the
// token endpoint is asked once more, not once per caller.
func TestTransport401Storm(t *testing.T) {
	srv := oauthtest.NewServer(oauthtest.Options{})
	defer srv.Close()
	srcs := sources(t, &oauth.ClientCredentials{Config: ccConfig(srv)}, 4)
	ctx := context.Background()
	tok, err := srcs[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range srcs[1:] {
		if _, err := s.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	srv.Revoke(tok.Value)
	base := &http.Transport{MaxIdleConnsPerHost: 64}
	defer base.CloseIdleConnections()
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range 512 {
		c := &http.Client{Transport: &oauth.Transport{Tokens: srcs[i%len(srcs)], Base: base}}
		wg.Go(func() {
			resp, err := c.Get(srv.URL + oauthtest.APIPath)
			if err != nil {
				failed.Add(1)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	n := srv.Grants("client_credentials")
	t.Logf("512 goroutines, 4 instances, token revoked: %d fetches in all, %d failed requests", n, failed.Load())
	if n != 2 || failed.Load() != 0 {
		t.Errorf("want 2 fetches (the first and one after the revocation) and 0 failed requests")
	}
}

// scripted is an API that answers each request with the next status, and
// records what it was sent.
type scripted struct {
	mu     sync.Mutex
	status []int
	header string // WWW-Authenticate of a 401
	bodies []string
	auth   []string
}

func (s *scripted) RoundTrip(req *http.Request) (*http.Response, error) {
	var b []byte
	if req.Body != nil {
		b, _ = io.ReadAll(req.Body)
		req.Body.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bodies = append(s.bodies, string(b))
	s.auth = append(s.auth, req.Header.Get("Authorization"))
	code := s.status[0]
	s.status = s.status[1:]
	h := http.Header{}
	if code == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", s.header)
	}
	return &http.Response{StatusCode: code, Header: h, Body: io.NopCloser(strings.NewReader("reply")), Request: req}, nil
}

// rotatingTokens hands out "t1", then "t2" after an Invalidate of "t1".
type rotatingTokens struct {
	mu          sync.Mutex
	cur         string
	invalidated []string
}

func (r *rotatingTokens) Token(context.Context) (token.Token, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return token.Token{Value: r.cur, ExpiresAt: time.Now().Add(time.Hour)}, nil
}

func (r *rotatingTokens) Invalidate(_ context.Context, bad string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.invalidated = append(r.invalidated, bad)
	if bad == r.cur {
		r.cur = "t2"
	}
	return nil
}

// TestTransportRetry: a 401 that says the token is invalid (RFC 6750) is
// retried once with a new token and the body replayed; other 401s, and
// requests whose body cannot be replayed, are not.
func TestTransportRetry(t *testing.T) {
	const invalid = `Bearer realm="api, v1", error="invalid_token", error_description="expired"`
	for _, tc := range []struct {
		name    string
		header  string
		body    func() (io.Reader, bool) // the body, and whether it has GetBody
		status  []int
		retried bool
	}{
		{"invalid_token", invalid, nil, []int{401, 200}, true},
		{"unquoted, any case", `bearer error=invalid_token`, nil, []int{401, 200}, true},
		{"replayable body", invalid, func() (io.Reader, bool) { return bytes.NewReader([]byte("payload")), true }, []int{401, 200}, true},
		{"body without GetBody", invalid, func() (io.Reader, bool) { return io.MultiReader(strings.NewReader("payload")), false }, []int{401}, false},
		{"no error parameter", `Bearer realm="api"`, nil, []int{401}, false},
		{"insufficient_scope", `Bearer error="insufficient_scope"`, nil, []int{401}, false},
		{"error in a quoted realm", `Bearer realm="error=\"invalid_token\""`, nil, []int{401}, false},
		{"another scheme", `Basic realm="api", error="invalid_token"`, nil, []int{401}, false},
		{"retried once only", invalid, nil, []int{401, 401}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &scripted{status: tc.status, header: tc.header}
			toks := &rotatingTokens{cur: "t1"}
			c := &http.Client{Transport: &oauth.Transport{Tokens: toks, Base: api}}
			var body io.Reader
			if tc.body != nil {
				body, _ = tc.body()
			}
			req, err := http.NewRequest(http.MethodPost, "http://api.invalid/x", body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if want := tc.status[len(tc.status)-1]; resp.StatusCode != want {
				t.Errorf("status %d, want %d", resp.StatusCode, want)
			}
			// A rejected token is invalidated even when the request
			// cannot be sent again.
			invalidates := tc.retried || tc.name == "body without GetBody"
			if tc.retried != (len(api.auth) == 2) || invalidates != (len(toks.invalidated) == 1) {
				t.Fatalf("sent %d times, invalidated %v; retried: want %v", len(api.auth), toks.invalidated, tc.retried)
			}
			if tc.retried {
				if api.auth[0] != "Bearer t1" || api.auth[1] != "Bearer t2" || api.bodies[0] != api.bodies[1] {
					t.Errorf("sent %q with %q, want the same body with t1 then t2", api.bodies, api.auth)
				}
			}
		})
	}
}

// TestTokenSourceUnderReuse: x/oauth2's ReuseTokenSource writes to the
// tokens it caches; the adapter hands each caller its own, so many of them
// over one Source do not race (run with -race).
func TestTokenSourceUnderReuse(t *testing.T) {
	st := tokentest.NewStore()
	src, err := token.NewSource("c", tokentest.New(time.Hour), st, st, token.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ts := oauth.TokenSource(src, 0)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			r := oauth2.ReuseTokenSource(nil, ts)
			for range 10 {
				if _, err := r.Token(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkTokenSource is the adapter's hot path: a fresh token, converted.
func BenchmarkTokenSource(b *testing.B) {
	st := tokentest.NewStore()
	src, err := token.NewSource("c", tokentest.New(time.Hour), st, st, token.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	ts := oauth.TokenSource(src, 0)
	for range 2 { // the second call records the use, then it is fresh
		if _, err := ts.Token(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ts.Token(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
