package wechat_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/wechat"
	"github.com/tokencache/tokencache/token/wechat/wechattest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const secret = wechattest.DefaultSecret

// logBuffer collects log output so tests can search it for secrets.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// noSecret fails the test if s holds the AppSecret or a long run of it.
func noSecret(t *testing.T, what, s string) {
	t.Helper()
	for i := 0; i+10 <= len(secret); i++ {
		if strings.Contains(s, secret[i:i+10]) {
			t.Errorf("%s contains the AppSecret: %s", what, s)
			return
		}
	}
}

func options(p string, logs io.Writer) rediscache.Options {
	return rediscache.Options{
		Prefix:  p,
		LockTTL: 2 * time.Second,
		Source: token.Options{
			MinRefreshAhead: time.Millisecond,
			PollInterval:    20 * time.Millisecond,
			Logger:          slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		},
	}
}

// newCache returns a Cache on a new client of b.
func newCache(t *testing.T, b redistest.Backend, o rediscache.Options) *rediscache.Cache {
	t.Helper()
	c, err := rediscache.New(b.Client(t), o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// source returns a Source of name on a new client of b.
func source(t *testing.T, b redistest.Backend, o rediscache.Options, name string, f token.Fetcher) *token.Source {
	t.Helper()
	s, err := newCache(t, b, o).Source(name, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func classic(srv *wechattest.Server) *wechat.TokenFetcher {
	return &wechat.TokenFetcher{AppID: wechattest.DefaultAppID, Secret: secret, BaseURL: srv.URL}
}

func stable(srv *wechattest.Server) *wechat.StableTokenFetcher {
	return &wechat.StableTokenFetcher{AppID: wechattest.DefaultAppID, Secret: secret, BaseURL: srv.URL}
}

func TestTokenFetcherReadsReply(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Options{})
	defer srv.Close()
	for name, f := range map[string]token.Fetcher{"classic": classic(srv), "stable": stable(srv)} {
		t.Run(name, func(t *testing.T) {
			before := time.Now()
			tok, err := f.Fetch(context.Background())
			after := time.Now()
			if err != nil {
				t.Fatal(err)
			}
			if len(tok.Value) != 512 || !srv.Valid(tok.Value) {
				t.Errorf("token of %d chars, valid %v", len(tok.Value), srv.Valid(tok.Value))
			}
			if tok.ExpiresAt.Before(before.Add(7199*time.Second)) || tok.ExpiresAt.After(after.Add(7200*time.Second)) {
				t.Errorf("ExpiresAt %v is not 7200 s after the request", tok.ExpiresAt.Sub(before))
			}
		})
	}
}

// TestLongTokenStoredIntact: a 512-character token survives Redis.
func TestLongTokenStoredIntact(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		srv := wechattest.NewServer(wechattest.Options{})
		defer srv.Close()
		var logs logBuffer
		o := options(redistest.Prefix(t), &logs)
		a := source(t, b, o, "wechat:wx1", classic(srv))
		other := source(t, b, o, "wechat:wx1", classic(srv))
		ta, err := a.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		tb, err := other.Token(context.Background())
		if err != nil || tb.Value != ta.Value || len(tb.Value) != 512 {
			t.Fatalf("read back %d chars (err %v), want the same 512", len(tb.Value), err)
		}
		if n := srv.Count(wechattest.EndpointToken); n != 1 {
			t.Errorf("token fetches = %d, want 1", n)
		}
	})
}

// TestErrorClasses: every class of failure reaches the caller as a typed
// error, nothing is cached, and no error or log line holds the AppSecret.
func TestErrorClasses(t *testing.T) {
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bytes.Repeat([]byte(" "), 100<<10))
	}))
	defer huge.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	type fetchers struct{ classic, stable token.Fetcher }
	cases := []struct {
		name  string
		fail  wechattest.Failure
		tweak func(c *wechat.TokenFetcher, s *wechat.StableTokenFetcher)
		want  func(error) bool
	}{
		{"wrong appid", 0, func(c *wechat.TokenFetcher, s *wechat.StableTokenFetcher) { c.AppID, s.AppID = "wxwrong", "wxwrong" },
			func(err error) bool { return wechat.IsPermanent(err) && code(err) == 40013 }},
		{"wrong secret", 0, func(c *wechat.TokenFetcher, s *wechat.StableTokenFetcher) {
			c.Secret, s.Secret = secret+"x", secret+"x"
		}, func(err error) bool { return wechat.IsPermanent(err) && code(err) == 40125 }},
		{"quota", wechattest.Quota, nil, func(err error) bool { return wechat.IsQuota(err) && !wechat.IsTemporary(err) }},
		{"busy", wechattest.Busy, nil, func(err error) bool { return wechat.IsTemporary(err) && code(err) == -1 }},
		{"502", wechattest.BadGateway, nil, func(err error) bool {
			return wechat.IsTemporary(err) && errors.Is(err, wechat.ErrBadReply)
		}},
		{"not JSON", wechattest.Malformed, nil, func(err error) bool { return errors.Is(err, wechat.ErrBadReply) }},
		{"empty token", wechattest.EmptyToken, nil, func(err error) bool { return errors.Is(err, wechat.ErrBadReply) }},
		{"expires_in 0", wechattest.BadExpiry, nil, func(err error) bool { return errors.Is(err, wechat.ErrBadReply) }},
		{"huge reply", 0, func(c *wechat.TokenFetcher, s *wechat.StableTokenFetcher) { c.BaseURL, s.BaseURL = huge.URL, huge.URL },
			func(err error) bool { return errors.Is(err, wechat.ErrBadReply) }},
		{"unreachable", 0, func(c *wechat.TokenFetcher, s *wechat.StableTokenFetcher) {
			c.BaseURL, s.BaseURL = closed.URL, closed.URL
		}, func(err error) bool { return err != nil && !errors.Is(err, wechat.ErrBadReply) }},
	}
	b := redistest.Backends(t)[0]
	var logs logBuffer
	var errs []string
	for _, tc := range cases {
		for _, kind := range []string{"classic", "stable"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				srv := wechattest.NewServer(wechattest.Options{})
				defer srv.Close()
				c, s := classic(srv), stable(srv)
				if tc.tweak != nil {
					tc.tweak(c, s)
				}
				var f token.Fetcher = c
				if kind == "stable" {
					f = s
				}
				if tc.fail != 0 {
					srv.FailNext(tc.fail)
				}
				p := redistest.Prefix(t)
				src := source(t, b, options(p, &logs), "wechat:wx1", f)
				_, err := src.Token(context.Background())
				if err == nil || !tc.want(err) {
					t.Fatalf("err = %v; not the expected class", err)
				}
				errs = append(errs, err.Error())
				cred, _ := newCache(t, b, rediscache.Options{Prefix: p}).Credential("wechat:wx1")
				if _, lerr := cred.Load(context.Background()); !errors.Is(lerr, token.ErrNotFound) {
					t.Errorf("something was cached after %v: %v", err, lerr)
				}
			})
		}
	}
	for _, e := range errs {
		noSecret(t, "an error", e)
	}
	noSecret(t, "the logs", logs.String())
	if !strings.Contains(logs.String(), "refresh failed") {
		t.Errorf("failures were not logged: %.300s", logs.String())
	}
}

func code(err error) int {
	var e *wechat.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestRedactedURLInTransportErrors(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	_, err := classic(&wechattest.Server{Server: closed}).Fetch(context.Background())
	if err == nil {
		t.Fatal("fetch from a closed server succeeded")
	}
	noSecret(t, "a transport error", err.Error())
	if !strings.Contains(err.Error(), "secret=REDACTED") {
		t.Errorf("error %q does not show the redacted URL", err)
	}
}

// TestStableForceRefresh: a routine run never forces; each invalidation of
// the current token forces once, within WeChat's limits.
func TestStableForceRefresh(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		// 1/60 scale: 120 s tokens, 500 ms between force refreshes.
		srv := wechattest.NewServer(wechattest.Options{Scale: 1.0 / 60})
		defer srv.Close()
		ctx := context.Background()
		var logs logBuffer
		o := options(redistest.Prefix(t), &logs)
		st := newCache(t, b, o)
		every := 600 * time.Millisecond // WeChat's 30 s, scaled, plus a margin
		var srcs []*token.Source
		for range 4 {
			lim, err := st.Limiter("wechat:wx1", "force_refresh", rediscache.Limit{PerDay: wechat.ForceRefreshPerDay, Every: every, DayOffset: wechat.DayOffset})
			if err != nil {
				t.Fatal(err)
			}
			f := stable(srv)
			f.Force = lim
			srcs = append(srcs, source(t, b, o, "wechat:wx1", f))
		}
		// Routine: many callers, no force.
		var wg sync.WaitGroup
		for _, s := range srcs {
			for range 16 {
				wg.Go(func() {
					for range 50 {
						if _, err := s.Token(ctx); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
		}
		wg.Wait()
		if n := srv.Count(wechattest.EndpointStableForce); n != 0 {
			t.Fatalf("%d force refreshes in a routine run", n)
		}
		// Each invalidation of the current token forces once; one too soon
		// after the previous is not forced (WeChat would ignore it).
		forced := 0
		for i, wait := range []time.Duration{0, 0, every} {
			time.Sleep(wait) // the limiter's interval, on purpose
			s := srcs[i%len(srcs)]
			tok, err := s.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Invalidate(ctx, tok.Value); err != nil {
				t.Fatal(err)
			}
			got, err := s.Token(ctx) // waits for the refresh
			if err != nil {
				t.Fatal(err)
			}
			if i != 1 {
				forced++
				if got.Value == tok.Value || srv.Valid(tok.Value) {
					t.Errorf("invalidation %d: the forced refresh did not replace the token", i)
				}
			}
			if n := srv.Count(wechattest.EndpointStableForce); n != forced {
				t.Errorf("after invalidation %d: %d force refreshes, want %d", i, n, forced)
			}
		}
	})
}

// TestTicketRetriesOnRejectedToken: the access token was replaced behind our
// back (strict mode); the ticket fetch invalidates it and retries once.
func TestTicketRetriesOnRejectedToken(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Options{Strict: true})
	defer srv.Close()
	b := redistest.Backends(t)[0]
	var logs logBuffer
	o := options(redistest.Prefix(t), &logs)
	ctx := context.Background()
	at := source(t, b, o, "wechat:wx1", classic(srv))
	ticket := source(t, b, o, "wechat:wx1:jsapi", &wechat.TicketFetcher{Tokens: at, BaseURL: srv.URL})
	if _, err := at.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := classic(srv).Fetch(ctx); err != nil { // another system's fetch kills ours
		t.Fatal(err)
	}
	tk, err := ticket.Token(ctx)
	if err != nil || !srv.Valid(tk.Value) {
		t.Fatalf("ticket = %v, %v", tk, err)
	}
	if n := srv.Count(wechattest.EndpointTicket); n != 2 {
		t.Errorf("getticket calls = %d, want 2 (rejected, retried)", n)
	}
	if n := srv.Count(wechattest.EndpointToken); n != 3 {
		t.Errorf("token fetches = %d, want 3 (ours, theirs, our refresh)", n)
	}
}

func apiClient(tokens wechat.TokenSource) *http.Client {
	return &http.Client{Transport: &wechat.Transport{Tokens: tokens}}
}

// apiCall calls the fake's ordinary API and returns its errcode.
func apiCall(ctx context.Context, hc *http.Client, base, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/cgi-bin/get_api_domain_ip", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var r struct {
		ErrCode int    `json:"errcode"`
		Echo    string `json:"echo"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, "", err
	}
	return r.ErrCode, r.Echo, nil
}

func TestTransport(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Options{Strict: true})
	defer srv.Close()
	b := redistest.Backends(t)[0]
	var logs logBuffer
	ctx := context.Background()
	at := source(t, b, options(redistest.Prefix(t), &logs), "wechat:wx1", classic(srv))
	hc := apiClient(at)

	t.Run("retries once with the body", func(t *testing.T) {
		if _, err := at.Token(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := classic(srv).Fetch(ctx); err != nil { // kills ours
			t.Fatal(err)
		}
		rejected := srv.Count(wechattest.EndpointAPIRejected)
		code, echo, err := apiCall(ctx, hc, srv.URL, `{"hello":"world"}`)
		if err != nil || code != 0 || echo != `{"hello":"world"}` {
			t.Fatalf("call = %d, %q, %v", code, echo, err)
		}
		if n := srv.Count(wechattest.EndpointAPIRejected) - rejected; n != 1 {
			t.Errorf("%d rejected attempts, want 1", n)
		}
	})
	t.Run("media passes through", func(t *testing.T) {
		resp, err := hc.Get(srv.URL + "/cgi-bin/media/get?media_id=m1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.Header.Get("Content-Type") != "image/jpeg" || !bytes.HasSuffix(body, []byte("JFIF media m1")) {
			t.Errorf("media reply %q (%s)", body, resp.Header.Get("Content-Type"))
		}
	})
	t.Run("retries only once", func(t *testing.T) {
		bogus := source(t, b, options(redistest.Prefix(t), &logs), "bogus", token.FetcherFunc(func(context.Context) (token.Token, error) {
			return token.Token{Value: "not-a-wechat-token", ExpiresAt: time.Now().Add(time.Hour)}, nil
		}))
		calls := srv.Count(wechattest.EndpointAPI)
		code, _, err := apiCall(ctx, apiClient(bogus), srv.URL, "")
		if err != nil || code != 40014 {
			t.Fatalf("call = %d, %v; want errcode 40014 passed through", code, err)
		}
		if n := srv.Count(wechattest.EndpointAPI) - calls; n != 2 {
			t.Errorf("%d attempts, want 2", n)
		}
	})
	noSecret(t, "the logs", logs.String())
}

// Test40001StormFetchesOnce: 8 instances × 64 goroutines all hold a token
// that another system's fetch just killed; every call gets 40001 once, and the
// cluster fetches one new token.
func Test40001StormFetchesOnce(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		srv := wechattest.NewServer(wechattest.Options{Strict: true})
		defer srv.Close()
		var logs logBuffer
		o := options(redistest.Prefix(t), &logs)
		ctx := context.Background()
		var clients []*http.Client
		for range 8 {
			s := source(t, b, o, "wechat:wx1", classic(srv))
			if _, err := s.Token(ctx); err != nil {
				t.Fatal(err)
			}
			clients = append(clients, apiClient(s))
		}
		if _, err := classic(srv).Fetch(ctx); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, hc := range clients {
			for range 64 {
				wg.Go(func() {
					if code, _, err := apiCall(ctx, hc, srv.URL, ""); err != nil || code != 0 {
						t.Errorf("call = %d, %v", code, err)
					}
				})
			}
		}
		wg.Wait()
		if n := srv.Count(wechattest.EndpointToken); n != 3 {
			t.Errorf("token fetches = %d, want 3 (first, the other system's, one refresh)", n)
		}
		t.Logf("%d API calls rejected with 40001 and retried", srv.Count(wechattest.EndpointAPIRejected))
	})
}

// TestErrorCodeIsShared: the errcode of a WeChat error is the code every
// instance learns through the backoff record.
func TestErrorCodeIsShared(t *testing.T) {
	class, code := token.Classify(fmt.Errorf("fetch: %w", &wechat.Error{Code: 40125, Msg: "invalid appsecret"}))
	if class != token.ClassPermanent || code != "40125" {
		t.Errorf("Classify = %q, %q; want permanent, 40125", class, code)
	}
}
