// Package oauthtest is a fake OAuth2 authorization server and protected API
// for tests, in the style of net/http/httptest: client credentials, refresh
// tokens that rotate on every use and revoke their family on reuse (as
// tokentest.Rotating), and an API that rejects tokens it did not issue or
// that expired with 401 and WWW-Authenticate: Bearer error="invalid_token".
package oauthtest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// Paths of the Server's endpoints.
const (
	TokenPath = "/token"
	APIPath   = "/api"
)

// Options configure a Server. The zero value is ready to use.
type Options struct {
	// ClientID and ClientSecret are the one client's. Default "client" and
	// "secret".
	ClientID, ClientSecret string
	// Lifetime of access tokens. Default 1h.
	Lifetime time.Duration
	// Grace is how long a replaced refresh token may be redeemed again
	// without revoking its family (tokentest.Rotating.Grace).
	Grace time.Duration
}

// Server is a running fake. Its methods are safe for concurrent use.
type Server struct {
	*httptest.Server
	opts Options
	rot  *tokentest.Rotating

	mu       sync.Mutex // guards the fields below
	issued   map[string]time.Time
	grants   map[string]int
	failures []Failure
}

// Failure is a reply the token endpoint gives instead of a token (FailNext).
type Failure struct {
	// Status is the HTTP status, e.g. 400, 429, 503.
	Status int
	// Code is the RFC 6749 error code, e.g. "invalid_client"; "" sends none.
	Code string
	// RetryAfter, if set, is sent as Retry-After.
	RetryAfter string
}

// NewServer starts a Server; Close it when done.
func NewServer(opts Options) *Server {
	if opts.ClientID == "" {
		opts.ClientID = "client"
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = "secret"
	}
	if opts.Lifetime <= 0 {
		opts.Lifetime = time.Hour
	}
	rot := tokentest.NewRotating(opts.Lifetime)
	rot.Grace = opts.Grace
	s := &Server{opts: opts, rot: rot, issued: map[string]time.Time{}, grants: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+TokenPath, s.token)
	mux.HandleFunc(APIPath, s.api)
	s.Server = httptest.NewServer(mux)
	return s
}

// TokenURL is the token endpoint's URL.
func (s *Server) TokenURL() string { return s.URL + TokenPath }

// Authorize starts a new refresh token family, as an authorization code
// exchange does, and returns its first refresh token.
func (s *Server) Authorize() string { return s.rot.Authorize() }

// FailNext makes the next requests to the token endpoint fail, in order.
func (s *Server) FailNext(f ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, f...)
}

// Grants counts token endpoint requests by grant_type (refused ones too).
func (s *Server) Grants(grant string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grants[grant]
}

// Revocations counts refresh token families revoked for reuse.
func (s *Server) Revocations() int { return s.rot.Revocations() }

// Valid reports whether the API accepts access token v now.
func (s *Server) Valid(v string) bool {
	s.mu.Lock()
	exp, ok := s.issued[v]
	s.mu.Unlock()
	return (ok && time.Now().Before(exp)) || s.rot.Valid(v)
}

// Revoke makes the API reject access token v, as when a token is revoked
// before it expires.
func (s *Server) Revoke(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.issued, v)
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	grant := r.PostFormValue("grant_type")
	s.mu.Lock()
	s.grants[grant]++
	var fail *Failure
	if len(s.failures) > 0 {
		fail = &s.failures[0]
		s.failures = s.failures[1:]
	}
	s.mu.Unlock()
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
	}
	switch {
	case fail != nil:
		replyError(w, *fail)
	case id != s.opts.ClientID || secret != s.opts.ClientSecret:
		replyError(w, Failure{Status: http.StatusUnauthorized, Code: "invalid_client"})
	case grant == "client_credentials":
		s.clientCredentials(w)
	case grant == "refresh_token":
		s.refresh(w, r.PostFormValue("refresh_token"))
	default:
		replyError(w, Failure{Status: http.StatusBadRequest, Code: "unsupported_grant_type"})
	}
}

func (s *Server) clientCredentials(w http.ResponseWriter) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	v := "cc-" + hex.EncodeToString(b)
	s.mu.Lock()
	s.issued[v] = time.Now().Add(s.opts.Lifetime)
	s.mu.Unlock()
	reply(w, map[string]any{"access_token": v, "token_type": "Bearer", "expires_in": int(s.opts.Lifetime.Seconds())})
}

func (s *Server) refresh(w http.ResponseWriter, rt string) {
	tok, next, err := s.rot.Redeem(nil, rt) //nolint:staticcheck // Rotating ignores ctx without Latency
	if errors.Is(err, token.ErrRefreshRevoked) {
		replyError(w, Failure{Status: http.StatusBadRequest, Code: "invalid_grant"})
		return
	}
	reply(w, map[string]any{"access_token": tok.Value, "token_type": "Bearer",
		"expires_in": int(time.Until(tok.ExpiresAt).Round(time.Second).Seconds()), "refresh_token": next})
}

// api answers 200 to a valid bearer token and 401 invalid_token otherwise.
func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	v, ok := bearer(r.Header.Get("Authorization"))
	if !ok || !s.Valid(v) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="oauthtest", error="invalid_token", error_description="expired or revoked"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

func bearer(h string) (string, bool) {
	const p = "Bearer "
	if len(h) <= len(p) || h[:len(p)] != p {
		return "", false
	}
	return h[len(p):], true
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

func replyError(w http.ResponseWriter, f Failure) {
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.Status)
	if f.Code != "" {
		_ = json.NewEncoder(w).Encode(map[string]string{"error": f.Code, "error_description": "oauthtest " + strconv.Itoa(f.Status)})
	}
}
