package wechat_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
	"github.com/tokencache/tokencache/token/wechat"
	"github.com/tokencache/tokencache/token/wechat/wechattest"
)

// The values a unit test redeems with: none may appear in an error.
var (
	testRefresh = "refreshtoken@@@" + strings.Repeat("s3cr3t", 8)
	testCT      = []string{"CT1-" + strings.Repeat("a", 60), "CT2-" + strings.Repeat("b", 60)}
)

// fakeComponent is a TokenSource of component tokens: testCT[i] after i
// invalidations.
type fakeComponent struct {
	mu          sync.Mutex
	invalidated []string
	err         error
}

func (c *fakeComponent) Token(ctx context.Context) (token.Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return token.Token{}, c.err
	}
	return token.Token{Value: testCT[min(len(c.invalidated), len(testCT)-1)]}, nil
}

func (c *fakeComponent) Invalidate(ctx context.Context, bad string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.invalidated = append(c.invalidated, bad)
	return nil
}

// redemption is a request the canned server received.
type redemption struct {
	method, path, rawQuery, ct string
	body                       map[string]string
}

// cannedServer answers the n-th call with replies[n] (the last one
// repeated) and records the requests.
func cannedServer(t *testing.T, replies ...string) (*httptest.Server, func() []redemption) {
	t.Helper()
	var mu sync.Mutex
	var got []redemption
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		rd := redemption{method: r.Method, path: r.URL.Path, rawQuery: r.URL.RawQuery, ct: r.URL.Query().Get("component_access_token")}
		_ = json.Unmarshal(raw, &rd.body)
		mu.Lock()
		n := len(got)
		got = append(got, rd)
		mu.Unlock()
		rep := replies[min(n, len(replies)-1)]
		if code, ok := strings.CutPrefix(rep, "HTTP "); ok {
			w.WriteHeader(map[string]int{"502": http.StatusBadGateway}[code])
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, rep)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []redemption {
		mu.Lock()
		defer mu.Unlock()
		return append([]redemption(nil), got...)
	}
}

func authorizerFetcher(c wechat.TokenSource, base string) *wechat.AuthorizerFetcher {
	return &wechat.AuthorizerFetcher{Component: c, ComponentAppID: "wxcomponent", AuthorizerAppID: "wxauthorizer", BaseURL: base}
}

func okReply(access, refresh string) string {
	b, _ := json.Marshal(map[string]any{"authorizer_access_token": access, "expires_in": 7200, "authorizer_refresh_token": refresh})
	return string(b)
}

// redeemCase is one canned exchange: the replies, and what Redeem must make
// of them.
type redeemCase struct {
	name    string
	replies []string
	calls   int // upstream calls expected
	invals  int // component tokens invalidated
	check   func(t *testing.T, tok token.Token, next string, err error)
}

func wantOK(access, next string) func(*testing.T, token.Token, string, error) {
	return func(t *testing.T, tok token.Token, gotNext string, err error) {
		if err != nil || tok.Value != access || gotNext != next {
			t.Errorf("Redeem = %v, next %q, %v; want %s, next %q", tok, gotNext, err, access, next)
		}
	}
}

func wantRevoked(code int) func(*testing.T, token.Token, string, error) {
	return func(t *testing.T, _ token.Token, _ string, err error) {
		class, c := token.Classify(err)
		if !errors.Is(err, token.ErrRefreshRevoked) || !wechat.IsRefreshRevoked(err) || !wechat.IsPermanent(err) ||
			class != token.ClassRefreshRevoked || c != strconv.Itoa(code) {
			t.Errorf("err = %v (class %s, code %s); want ErrRefreshRevoked, permanent, code %d", err, class, c, code)
		}
	}
}

func wantBadReplyWithNext(want string) func(*testing.T, token.Token, string, error) {
	return func(t *testing.T, tok token.Token, next string, err error) {
		if !errors.Is(err, wechat.ErrBadReply) || tok.Value != "" || next != want {
			t.Errorf("Redeem = %v, next %q, %v; want no token, next %q and ErrBadReply", tok, next, err, want)
		}
	}
}

func wantBadReply(t *testing.T, tok token.Token, next string, err error) {
	if !errors.Is(err, wechat.ErrBadReply) || tok.Value != "" || next != "" {
		t.Errorf("Redeem = %v, next %q, %v; want nothing and ErrBadReply", tok, next, err)
	}
	if errors.Is(err, token.ErrRefreshRevoked) {
		t.Errorf("a bad reply is not a refused refresh token: %v", err)
	}
}

func redeemCases() []redeemCase {
	long := strings.Repeat("r", token.MaxTokenLen+1)
	return []redeemCase{
		{"rotated", []string{okReply("AT1", "refreshtoken@@@next")}, 1, 0, wantOK("AT1", "refreshtoken@@@next")},
		{"not rotated", []string{okReply("AT1", testRefresh)}, 1, 0, wantOK("AT1", "")},
		{"no refresh token", []string{`{"authorizer_access_token":"AT1","expires_in":7200}`}, 1, 0, wantOK("AT1", "")},
		{"empty refresh token", []string{okReply("AT1", "")}, 1, 0, wantOK("AT1", "")},
		{"61023", []string{`{"errcode":61023,"errmsg":"refresh_token is invalid rid: 1"}`}, 1, 0, wantRevoked(61023)},
		{"61003", []string{`{"errcode":61003,"errmsg":"component is not authorized by this account"}`}, 1, 0, wantRevoked(61003)},
		{"61023 echoing the refresh token", []string{`{"errcode":61023,"errmsg":"refresh_token ` + testRefresh + ` is invalid"}`}, 1, 0, wantRevoked(61023)},
		{"component token rejected once", []string{`{"errcode":40001,"errmsg":"invalid credential"}`, okReply("AT2", "")}, 2, 1, wantOK("AT2", "")},
		{"component token rejected twice", []string{`{"errcode":42001,"errmsg":"expired"}`, `{"errcode":40014,"errmsg":"invalid"}`}, 2, 1,
			func(t *testing.T, _ token.Token, _ string, err error) {
				if !wechat.IsInvalidToken(err) || errors.Is(err, token.ErrRefreshRevoked) {
					t.Errorf("err = %v; want the second rejection, not a revoked refresh token", err)
				}
			}},
		{"busy", []string{`{"errcode":-1,"errmsg":"system error"}`}, 1, 0, func(t *testing.T, _ token.Token, _ string, err error) {
			if !wechat.IsTemporary(err) || wechat.IsPermanent(err) || errors.Is(err, token.ErrRefreshRevoked) {
				t.Errorf("err = %v; want temporary", err)
			}
		}},
		{"HTTP 502", []string{"HTTP 502"}, 1, 0, wantBadReply},
		{"not JSON", []string{"<html>502</html>"}, 1, 0, wantBadReply},
		{"oversized", []string{`{"authorizer_access_token":"AT1","expires_in":7200}` + strings.Repeat(" ", 100<<10)}, 1, 0, wantBadReply},
		// The reply replaced the refresh token: next comes with the
		// error, for the Source to commit (see token.Redeemer).
		{"empty access token", []string{okReply("", "refreshtoken@@@next")}, 1, 0, wantBadReplyWithNext("refreshtoken@@@next")},
		{"access token not a string", []string{`{"authorizer_access_token":7,"expires_in":7200}`}, 1, 0, wantBadReply},
		{"expires_in 0", []string{`{"authorizer_access_token":"AT1","expires_in":0}`}, 1, 0, wantBadReply},
		{"expires_in a year", []string{`{"authorizer_access_token":"AT1","expires_in":31536000}`}, 1, 0, wantBadReply},
		{"refresh token too long", []string{okReply("AT1", long)}, 1, 0, wantBadReply},
		{"refresh token not a string", []string{`{"authorizer_access_token":"AT1","expires_in":7200,"authorizer_refresh_token":{"v":1}}`}, 1, 0, wantBadReply},
	}
}

// TestAuthorizerRedeem: each reply is read as documented, the request is
// the documented one (the refresh token in the body only), a rejected
// component token is invalidated and retried once, and no error holds the
// refresh token or a component token.
func TestAuthorizerRedeem(t *testing.T) {
	for _, tc := range redeemCases() {
		t.Run(tc.name, func(t *testing.T) {
			srv, got := cannedServer(t, tc.replies...)
			comp := &fakeComponent{}
			tok, next, err := authorizerFetcher(comp, srv.URL).Redeem(context.Background(), testRefresh)
			tc.check(t, tok, next, err)
			reqs := got()
			if len(reqs) != tc.calls || len(comp.invalidated) != tc.invals {
				t.Errorf("%d calls, %d invalidations; want %d, %d", len(reqs), len(comp.invalidated), tc.calls, tc.invals)
			}
			for i, r := range reqs {
				want := map[string]string{"component_appid": "wxcomponent", "authorizer_appid": "wxauthorizer", "authorizer_refresh_token": testRefresh}
				if r.method != http.MethodPost || r.path != "/cgi-bin/component/api_authorizer_token" || r.ct != testCT[i] ||
					!equalMaps(r.body, want) || strings.Contains(r.rawQuery, "refresh") {
					t.Errorf("request %d: %s %s?%s %v", i, r.method, r.path, r.rawQuery, r.body)
				}
			}
			for i, bad := range comp.invalidated {
				if bad != testCT[i] {
					t.Errorf("invalidated %.8s..., want %.8s...", bad, testCT[i])
				}
			}
			if err != nil {
				noneOf(t, err.Error(), append([]string{testRefresh}, testCT...)...)
			}
		})
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// noneOf fails the test if s holds any of secrets.
func noneOf(t *testing.T, s string, secrets ...string) {
	t.Helper()
	for _, sec := range secrets {
		if strings.Contains(s, sec) {
			t.Errorf("%q holds a secret (%.12s...)", s, sec)
		}
	}
}

// TestAuthorizerRedeemFailsEarly: what needs no call makes none.
func TestAuthorizerRedeemFailsEarly(t *testing.T) {
	srv, got := cannedServer(t, okReply("AT1", ""))
	ctx := context.Background()
	down := errors.New("component source down")
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	for name, run := range map[string]func() error{
		"Fetch": func() error {
			_, err := authorizerFetcher(&fakeComponent{}, srv.URL).Fetch(ctx)
			return wantIs(err, token.ErrNoRefreshState)
		},
		"empty refresh token": func() error {
			_, _, err := authorizerFetcher(&fakeComponent{}, srv.URL).Redeem(ctx, "")
			return wantIs(err, token.ErrNoRefreshState)
		},
		"no component source": func() error {
			_, _, err := authorizerFetcher(nil, srv.URL).Redeem(ctx, testRefresh)
			return wantIs(err, token.ErrInvalidConfig)
		},
		"component source fails": func() error {
			_, _, err := authorizerFetcher(&fakeComponent{err: down}, srv.URL).Redeem(ctx, testRefresh)
			return wantIs(err, down)
		},
		"context canceled": func() error {
			_, _, err := authorizerFetcher(&fakeComponent{}, srv.URL).Redeem(canceled, testRefresh)
			return wantIs(err, context.Canceled)
		},
	} {
		if err := run(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if n := len(got()); n != 0 {
		t.Errorf("%d upstream calls, want 0", n)
	}
}

func wantIs(err, target error) error {
	if !errors.Is(err, target) {
		return errors.Join(errors.New("not the expected error"), err)
	}
	return nil
}

// TestAuthorizerRedeemCanceledInFlight: a redemption that WeChat does not
// answer ends when its context does.
func TestAuthorizerRedeemCanceledInFlight(t *testing.T) {
	arrived, stop := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		close(arrived)
		<-stop // the client gives up first; then the test ends the handler
	}))
	defer srv.Close()
	defer close(stop)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := authorizerFetcher(&fakeComponent{}, srv.URL).Redeem(ctx, testRefresh)
		done <- err
	}()
	<-arrived
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

// TestAuthorizerTransportErrorRedacted: Go's *url.Error prints the URL,
// which holds the component_access_token: the error shows it shortened.
func TestAuthorizerTransportErrorRedacted(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	_, _, err := authorizerFetcher(&fakeComponent{}, closed.URL).Redeem(context.Background(), testRefresh)
	if err == nil || !strings.Contains(err.Error(), "component_access_token=") {
		t.Fatalf("err = %v, want a transport error showing the redacted URL", err)
	}
	noneOf(t, err.Error(), append([]string{testRefresh}, testCT...)...)
}

// TestAuthorizerIdentity: the account is the pair of platform and
// authorizer, and is neither the authorizer's own nor the platform's.
func TestAuthorizerIdentity(t *testing.T) {
	a := authorizerFetcher(nil, "").Identity()
	b := (&wechat.AuthorizerFetcher{ComponentAppID: "wxcomponent", AuthorizerAppID: "wxother"}).Identity()
	c := (&wechat.AuthorizerFetcher{ComponentAppID: "wxother", AuthorizerAppID: "wxauthorizer"}).Identity()
	own := (&wechat.TokenFetcher{AppID: "wxauthorizer"}).Identity()
	comp := (&wechat.ComponentTokenFetcher{ComponentAppID: "wxcomponent"}).Identity()
	seen := map[string]bool{}
	for _, id := range []token.Identity{a, b, c, own, comp} {
		if seen[id.Account] {
			t.Errorf("account %q is shared", id.Account)
		}
		seen[id.Account] = true
	}
	if len(a.Secret) != 0 || !bytes.Contains([]byte(a.Account), []byte("wxcomponent")) {
		t.Errorf("identity %+v", a)
	}
}

// inProcess is an http.RoundTripper that serves requests with a handler in
// the calling goroutine, so that a fake WeChat runs inside a synctest
// bubble, on its clock.
type inProcess struct{ h http.Handler }

func (p inProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	p.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

// openPlatform is a cluster of instances of a third-party platform: each
// has a Source of the component token and one of an authorizer's token, each
// credential shared through its own in-memory store.
type openPlatform struct {
	srv         *wechattest.Server
	authorizers []*token.Source
	store       *tokentest.Store // the authorizer's, also its RefreshStore
	logs        *logBuffer
}

const authorizerAppID = "wx00authorizer0001"

// newOpenPlatform starts n instances on srv. Call it inside the bubble.
func newOpenPlatform(t *testing.T, srv *wechattest.Server, n int) *openPlatform {
	t.Helper()
	p := &openPlatform{srv: srv, store: tokentest.NewStore(), logs: &logBuffer{}}
	hc := &http.Client{Transport: inProcess{srv.Config.Handler}}
	opts := token.Options{Logger: slog.New(slog.NewJSONHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	compStore := tokentest.NewStore()
	for range n {
		comp := newTestSource(t, "component", &wechat.ComponentTokenFetcher{
			ComponentAppID: wechattest.DefaultComponentAppID, Secret: wechattest.DefaultComponentSecret,
			VerifyTicket: func(context.Context) (string, error) { return srv.VerifyTicket(), nil },
			BaseURL:      srv.URL, HTTPClient: hc,
		}, compStore, opts)
		p.authorizers = append(p.authorizers, newTestSource(t, "authorizer", &wechat.AuthorizerFetcher{
			Component: comp, ComponentAppID: wechattest.DefaultComponentAppID, AuthorizerAppID: authorizerAppID,
			BaseURL: srv.URL, HTTPClient: hc,
		}, p.store, opts))
	}
	return p
}

func newTestSource(t *testing.T, name string, f token.Fetcher, st *tokentest.Store, opts token.Options) *token.Source {
	t.Helper()
	s, err := token.NewSource(name, f, st, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// authorize makes a new authorization and seeds it through instance i.
func (p *openPlatform) authorize(t *testing.T, i int) string {
	t.Helper()
	rt := p.srv.Authorize(wechattest.DefaultComponentAppID, authorizerAppID)
	if err := p.authorizers[i].SeedRefresh(context.Background(), rt); err != nil {
		t.Fatal(err)
	}
	return rt
}

// TestAuthorizerClusterRedeemsOncePerPeriod: 4 instances × 8 goroutines
// over 20 token lifetimes (on synctest's clock) redeem the refresh token
// once per refresh period, fetch one component token per period, hand out
// only valid tokens, and never get an authorization revoked, whether WeChat
// returns the same refresh token (as documented) or a new one each time.
func TestAuthorizerClusterRedeemsOncePerPeriod(t *testing.T) {
	for _, rotate := range []bool{false, true} {
		t.Run(map[bool]string{false: "same refresh token", true: "rotating"}[rotate], func(t *testing.T) {
			srv := wechattest.NewServer(wechattest.Options{RotateAuthorizerRefresh: rotate, Latency: 50 * time.Millisecond})
			defer srv.Close()
			synctest.Test(t, func(t *testing.T) { clusterRun(t, srv, rotate) })
		})
	}
}

func clusterRun(t *testing.T, srv *wechattest.Server, rotate bool) {
	p := newOpenPlatform(t, srv, 4)
	first := p.authorize(t, 0)
	lifetime := srv.Options().Lifetime
	var mu sync.Mutex
	var errs, invalid int
	var wg sync.WaitGroup
	for _, s := range p.authorizers {
		for range 8 {
			wg.Go(func() {
				for start := time.Now(); time.Since(start) < 20*lifetime; time.Sleep(5 * time.Minute) {
					tok, err := s.Token(context.Background())
					mu.Lock()
					if err != nil {
						if errs++; errs < 3 {
							t.Logf("at %v: %v", time.Since(start), err)
						}
					} else if !srv.Valid(tok.Value) {
						invalid++
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	ideal := 1 + int(20*lifetime/(lifetime*8/10)) // the first, then one per refresh-ahead period
	redeemed, comps := srv.Count(wechattest.EndpointAuthorizerRedeemed), srv.Count(wechattest.EndpointComponentToken)
	revoked, calls := srv.Count(wechattest.EndpointAuthorizerRevoked), srv.Count(wechattest.EndpointAuthorizerToken)
	t.Logf("rotate %v: %d redemptions in %d calls (ideal %d), %d component tokens, %d revoked, %d errors, %d invalid tokens",
		rotate, redeemed, calls, ideal, comps, revoked, errs, invalid)
	if redeemed > ideal+1 || redeemed < ideal-1 || calls != redeemed || comps > ideal+1 || revoked != 0 || errs != 0 || invalid != 0 {
		t.Errorf("want %d±1 redemptions, as many calls, at most %d component tokens, 0 revoked, 0 errors, 0 invalid", ideal, ideal+1)
	}
	st, err := p.store.LoadRefresh(context.Background())
	if err != nil || (st.Value == first) == rotate {
		t.Errorf("stored refresh state: rotated %v, err %v; want rotated %v", st.Value != first, err, rotate)
	}
	noneOf(t, p.logs.String(), first, st.Value)
}

// TestAuthorizerRevokedUntilSeeded: another system redeems the platform's
// refresh token behind its back (rotating), so the platform's next
// redemption reuses a retired one and WeChat revokes the authorization
// (61023). Every instance then gets an error matching
// token.ErrRefreshRevoked, and the cluster asks WeChat again at most once
// per permanent backoff (10 minutes), not in a loop, until a new
// authorization is seeded, which works at once.
func TestAuthorizerRevokedUntilSeeded(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Options{RotateAuthorizerRefresh: true})
	defer srv.Close()
	synctest.Test(t, func(t *testing.T) {
		p := newOpenPlatform(t, srv, 2)
		first := p.authorize(t, 0)
		ctx := context.Background()
		other := &wechat.AuthorizerFetcher{Component: &srvComponent{srv}, ComponentAppID: wechattest.DefaultComponentAppID,
			AuthorizerAppID: authorizerAppID, BaseURL: srv.URL, HTTPClient: &http.Client{Transport: inProcess{srv.Config.Handler}}}
		if _, next, err := other.Redeem(ctx, first); err != nil || next == "" {
			t.Fatalf("the other system's redemption: next %v, %v", next != "", err)
		}
		_, err := p.authorizers[0].Token(ctx)
		if !errors.Is(err, token.ErrRefreshRevoked) || !wechat.IsRefreshRevoked(err) || !wechat.IsPermanent(err) {
			t.Fatalf("redeeming a retired refresh token: %v; want 61023, ErrRefreshRevoked", err)
		}
		if n := srv.Count(wechattest.EndpointAuthorizerRevoked); n != 1 {
			t.Fatalf("%d authorizations revoked, want 1", n)
		}
		calls := srv.Count(wechattest.EndpointAuthorizerToken)
		for start := time.Now(); time.Since(start) < time.Hour; time.Sleep(time.Minute) {
			for i, s := range p.authorizers {
				if _, err := s.Token(ctx); !errors.Is(err, token.ErrRefreshRevoked) {
					t.Fatalf("instance %d after %v: %v; want ErrRefreshRevoked", i, time.Since(start), err)
				}
			}
		}
		n := srv.Count(wechattest.EndpointAuthorizerToken) - calls
		t.Logf("an hour after the revocation: %d more redemption calls", n)
		if n > 6 {
			t.Errorf("%d redemptions of a revoked authorization within an hour; want at most 6 (one per 10 min backoff)", n)
		}
		p.authorize(t, 1)
		for i, s := range p.authorizers {
			synctest.Wait()
			if tok, err := s.Token(ctx); err != nil || !srv.Valid(tok.Value) {
				t.Errorf("instance %d after SeedRefresh: %v, %v", i, tok, err)
			}
		}
		noneOf(t, p.logs.String(), first)
	})
}

// srvComponent is a TokenSource that fetches a new component token from
// srv each time, as another system would.
type srvComponent struct{ srv *wechattest.Server }

func (c *srvComponent) Token(ctx context.Context) (token.Token, error) {
	return (&wechat.ComponentTokenFetcher{
		ComponentAppID: wechattest.DefaultComponentAppID, Secret: wechattest.DefaultComponentSecret,
		VerifyTicket: func(context.Context) (string, error) { return c.srv.VerifyTicket(), nil },
		BaseURL:      c.srv.URL, HTTPClient: &http.Client{Transport: inProcess{c.srv.Config.Handler}},
	}).Fetch(ctx)
}

func (c *srvComponent) Invalidate(context.Context, string) error { return nil }

// TestAuthorizerRetriesOnRejectedComponentToken: another system's fetch
// replaced the platform's component token (strict mode); the redemption
// invalidates it, the component Source fetches a new one, and the
// redemption is retried once.
func TestAuthorizerRetriesOnRejectedComponentToken(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Options{Strict: true})
	defer srv.Close()
	synctest.Test(t, func(t *testing.T) {
		p := newOpenPlatform(t, srv, 1)
		p.authorize(t, 0)
		ctx := context.Background()
		if _, err := p.authorizers[0].Token(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := (&srvComponent{srv}).Token(ctx); err != nil { // kills ours
			t.Fatal(err)
		}
		tok, _ := p.authorizers[0].Token(ctx)
		if err := p.authorizers[0].Invalidate(ctx, tok.Value); err != nil {
			t.Fatal(err)
		}
		if tok, err := p.authorizers[0].Token(ctx); err != nil || !srv.Valid(tok.Value) {
			t.Fatalf("after the component token was replaced: %v, %v", tok, err)
		}
		calls, comps := srv.Count(wechattest.EndpointAuthorizerToken), srv.Count(wechattest.EndpointComponentToken)
		if calls != 3 || comps != 3 {
			t.Errorf("%d redemption calls, %d component tokens; want 3 (first, rejected, retried), 3 (ours, theirs, our new one)", calls, comps)
		}
	})
}
