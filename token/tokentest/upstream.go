// Package tokentest provides a fake token upstream for tests, in the spirit of
// net/http/httptest: it counts fetches, issues tokens of a given lifetime,
// and, like the WeChat access_token endpoint, invalidates the previous token
// whenever it issues a new one.
//
// It also provides Store, an in-memory token.Store and token.Locker, and
// TestStore, a conformance suite in the spirit of testing/fstest.TestFS that
// checks a store implementation (Store, package rediscache, or your own)
// keeps the contract token.Source relies on.
package tokentest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/tokencache/tokencache/token"
)

// ErrUnavailable is the default error of an injected failure.
var ErrUnavailable = errors.New("tokentest: upstream unavailable")

// Upstream is a fake token service. Set its fields before first use; its
// methods are safe for concurrent use.
type Upstream struct {
	// Lifetime of each token. Default 1s.
	Lifetime time.Duration
	// Latency of each fetch.
	Latency time.Duration
	// Grace is how long a replaced token stays valid. Zero is strict: a new
	// token invalidates the previous one at once.
	Grace time.Duration
	// TokenLen is the length of issued tokens. Default 32 (at least 16).
	TokenLen int

	mu       sync.RWMutex
	inflight int
	calls    int
	issued   []time.Time
	values   []string
	tokens   map[string]*issue
	current  *issue
	failures []error
	hold     chan struct{}
	entered  chan struct{}
}

type issue struct {
	expires  time.Time
	replaced time.Time // zero while current
}

// New returns an Upstream whose tokens live for lifetime.
func New(lifetime time.Duration) *Upstream {
	return &Upstream{Lifetime: lifetime}
}

// Fetch issues a new token, invalidating the previous one. It implements
// token.Fetcher. ExpiresAt counts from the start of the call, as a client
// that measures from the moment it sent its request would.
func (u *Upstream) Fetch(ctx context.Context) (token.Token, error) {
	start := time.Now()
	defer func() {
		u.mu.Lock()
		u.inflight--
		u.mu.Unlock()
	}()
	u.mu.Lock()
	u.calls++
	u.inflight++
	hold, entered := u.hold, u.entered
	var fail error
	if len(u.failures) > 0 {
		fail, u.failures = u.failures[0], u.failures[1:]
	}
	u.mu.Unlock()

	if entered != nil {
		select {
		case entered <- struct{}{}:
		default:
		}
	}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return token.Token{}, ctx.Err()
		}
	}
	if u.Latency > 0 {
		t := time.NewTimer(u.Latency)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return token.Token{}, ctx.Err()
		}
	}
	if fail != nil {
		return token.Token{}, fail
	}
	lifetime := u.lifetime()
	v := u.newValue()
	now := time.Now()

	u.mu.Lock()
	defer u.mu.Unlock()
	if u.tokens == nil {
		u.tokens = make(map[string]*issue)
	}
	if u.current != nil {
		u.current.replaced = now
	}
	u.current = &issue{expires: now.Add(lifetime)}
	u.tokens[v] = u.current
	u.issued = append(u.issued, now)
	u.values = append(u.values, v)
	return token.Token{Value: v, ExpiresAt: start.Add(lifetime)}, nil
}

func (u *Upstream) lifetime() time.Duration {
	if u.Lifetime <= 0 {
		return time.Second
	}
	return u.Lifetime
}

func (u *Upstream) newValue() string {
	n := max(u.TokenLen, 16)
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return ("tk" + hex.EncodeToString(b))[:n]
}

// Valid reports whether the upstream accepts v now.
func (u *Upstream) Valid(v string) bool {
	ok, _ := u.Check(v)
	return ok
}

// Check reports whether the upstream accepts v now and, if not, for how long
// it has been rejecting it (0 for a token it never issued).
func (u *Upstream) Check(v string) (valid bool, deadFor time.Duration) {
	now := time.Now()
	end, ok := u.ValidUntil(v)
	if !ok {
		return false, 0
	}
	if now.Before(end) {
		return true, 0
	}
	return false, now.Sub(end)
}

// ValidUntil returns when the upstream stops (or stopped) accepting v: its
// expiry, or the end of its grace after it was replaced. ok is false for a
// token it never issued.
func (u *Upstream) ValidUntil(v string) (end time.Time, ok bool) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	t := u.tokens[v]
	if t == nil {
		return time.Time{}, false
	}
	end = t.expires
	if !t.replaced.IsZero() && t.replaced.Add(u.Grace).Before(end) {
		end = t.replaced.Add(u.Grace)
	}
	return end, true
}

// InFlight returns how many Fetch calls are under way.
func (u *Upstream) InFlight() int {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.inflight
}

// Calls returns how many times Fetch was called, failures included.
func (u *Upstream) Calls() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.calls
}

// Issued returns how many tokens were issued.
func (u *Upstream) Issued() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.issued)
}

// IssueTimes returns when each token was issued, oldest first.
func (u *Upstream) IssueTimes() []time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]time.Time(nil), u.issued...)
}

// Tokens returns the issued tokens, oldest first.
func (u *Upstream) Tokens() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.values...)
}

// FailNext makes the next len(errs) fetches fail with those errors; a nil
// error stands for ErrUnavailable.
func (u *Upstream) FailNext(errs ...error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, err := range errs {
		if err == nil {
			err = ErrUnavailable
		}
		u.failures = append(u.failures, err)
	}
}

// Hold makes fetches block until release is called (or their context ends).
// Each blocked fetch sends on entered (buffered, 64 deep).
func (u *Upstream) Hold() (entered <-chan struct{}, release func()) {
	u.mu.Lock()
	defer u.mu.Unlock()
	hold, ent := make(chan struct{}), make(chan struct{}, 64)
	u.hold, u.entered = hold, ent
	var once sync.Once
	return ent, func() {
		once.Do(func() {
			u.mu.Lock()
			u.hold, u.entered = nil, nil
			u.mu.Unlock()
			close(hold)
		})
	}
}

// ServeHTTP serves the upstream to other processes:
//
//	GET /token           {"token": "...", "expires_in_ms": 1000}, or 503 on failure
//	GET /valid?token=... {"valid": true}
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/token":
		tok, err := u.Fetch(r.Context())
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(reply{Token: tok.Value, ExpiresInMS: time.Until(tok.ExpiresAt).Milliseconds()})
	case "/valid":
		_ = json.NewEncoder(w).Encode(map[string]bool{"valid": u.Valid(r.URL.Query().Get("token"))})
	default:
		http.NotFound(w, r)
	}
}

type reply struct {
	Token       string `json:"token"`
	ExpiresInMS int64  `json:"expires_in_ms"`
}

// HTTPFetcher fetches from an Upstream served over HTTP at baseURL.
func HTTPFetcher(baseURL string, client *http.Client) token.Fetcher {
	if client == nil {
		client = http.DefaultClient
	}
	return token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
		start := time.Now()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/token", nil)
		if err != nil {
			return token.Token{}, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return token.Token{}, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if err != nil {
			return token.Token{}, err
		}
		if resp.StatusCode != http.StatusOK {
			return token.Token{}, fmt.Errorf("tokentest: upstream status %d", resp.StatusCode)
		}
		var r reply
		if err := json.Unmarshal(body, &r); err != nil || r.Token == "" || r.ExpiresInMS <= 0 {
			return token.Token{}, fmt.Errorf("tokentest: malformed reply (%d bytes)", len(body))
		}
		return token.Token{Value: r.Token, ExpiresAt: start.Add(time.Duration(r.ExpiresInMS) * time.Millisecond)}, nil
	})
}

// HTTPValid asks an Upstream served at baseURL whether it accepts v.
func HTTPValid(ctx context.Context, client *http.Client, baseURL, v string) (bool, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/valid?token="+url.QueryEscape(v), nil)
	if err != nil {
		return false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var r map[string]bool
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return false, fmt.Errorf("tokentest: valid: %w (status %s)", err, strconv.Itoa(resp.StatusCode))
	}
	return r["valid"], nil
}
