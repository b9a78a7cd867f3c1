package wechattest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/wechat"
	"github.com/tokencache/tokencache/token/wechat/wechattest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func fetcher(srv *wechattest.Server) *wechat.TokenFetcher {
	return &wechat.TokenFetcher{AppID: wechattest.DefaultAppID, Secret: wechattest.DefaultSecret, BaseURL: srv.URL}
}

func TestClassicTokenModes(t *testing.T) {
	ctx := context.Background()
	for _, strict := range []bool{true, false} {
		srv := wechattest.NewServer(wechattest.Options{Strict: strict})
		a, err := fetcher(srv).Fetch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := fetcher(srv).Fetch(ctx)
		if srv.Valid(a.Value) == strict || !srv.Valid(b.Value) {
			t.Errorf("strict %v: old valid %v, new valid %v", strict, srv.Valid(a.Value), srv.Valid(b.Value))
		}
		if srv.Count(wechattest.EndpointToken) != 2 {
			t.Errorf("count %d", srv.Count(wechattest.EndpointToken))
		}
		srv.Close()
	}
}

func TestDailyQuota(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Options{DailyQuota: 2})
	defer srv.Close()
	ctx := context.Background()
	for range 2 {
		if _, err := fetcher(srv).Fetch(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fetcher(srv).Fetch(ctx); !wechat.IsQuota(err) {
		t.Errorf("third fetch: %v, want 45009", err)
	}
}

func TestStableToken(t *testing.T) {
	// 1/600 scale: 12 s tokens, renewal 0.5 s before expiry, 50 ms between
	// force refreshes.
	srv := wechattest.NewServer(wechattest.Options{Scale: 1.0 / 600})
	defer srv.Close()
	ctx := context.Background()
	f := &wechat.StableTokenFetcher{AppID: wechattest.DefaultAppID, Secret: wechattest.DefaultSecret, BaseURL: srv.URL}
	a, err := f.Fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := f.Fetch(ctx)
	if a.Value != b.Value {
		t.Error("normal mode returned a new token while the old one is valid")
	}
	if srv.Count(wechattest.EndpointStableForce) != 0 {
		t.Error("a force refresh without force_refresh")
	}
}

func TestComponentToken(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Options{})
	defer srv.Close()
	ctx := context.Background()
	f := func(appID, secret, ticket string) *wechat.ComponentTokenFetcher {
		return &wechat.ComponentTokenFetcher{ComponentAppID: appID, Secret: secret, BaseURL: srv.URL,
			VerifyTicket: func(context.Context) (string, error) { return ticket, nil }}
	}
	id, sec := wechattest.DefaultComponentAppID, wechattest.DefaultComponentSecret
	for _, tc := range []struct {
		name string
		f    *wechat.ComponentTokenFetcher
		code int
	}{
		{"wrong appid", f("wxwrong", sec, srv.VerifyTicket()), wechat.CodeInvalidComponent},
		{"wrong secret", f(id, sec+"x", srv.VerifyTicket()), wechat.CodeInvalidAppSecret},
		{"unknown ticket", f(id, sec, "ticket@@@forged"), wechat.CodeTicketInvalid},
	} {
		_, err := tc.f.Fetch(ctx)
		var e *wechat.Error
		if !errors.As(err, &e) || e.Code != tc.code {
			t.Errorf("%s: %v, want errcode %d", tc.name, err, tc.code)
		}
	}
	tok, err := f(id, sec, srv.VerifyTicket()).Fetch(ctx)
	if err != nil || !srv.Valid(tok.Value) {
		t.Fatalf("component token %v, %v", tok, err)
	}
	if n := srv.Count(wechattest.EndpointComponentToken); n != 4 {
		t.Errorf("%d calls, want 4", n)
	}
}

// redeemer returns an AuthorizerFetcher of srv's default platform for
// authorizer, with a component token fetched anew each time.
func redeemer(srv *wechattest.Server, authorizer string) *wechat.AuthorizerFetcher {
	return &wechat.AuthorizerFetcher{Component: componentSource{srv}, ComponentAppID: wechattest.DefaultComponentAppID,
		AuthorizerAppID: authorizer, BaseURL: srv.URL}
}

type componentSource struct{ srv *wechattest.Server }

func (c componentSource) Token(ctx context.Context) (token.Token, error) {
	return (&wechat.ComponentTokenFetcher{ComponentAppID: wechattest.DefaultComponentAppID, Secret: wechattest.DefaultComponentSecret,
		BaseURL: c.srv.URL, VerifyTicket: func(context.Context) (string, error) { return c.srv.VerifyTicket(), nil }}).Fetch(ctx)
}

func (componentSource) Invalidate(context.Context, string) error { return nil }

func TestAuthorizerToken(t *testing.T) {
	ctx := context.Background()
	for _, rotate := range []bool{false, true} {
		srv := wechattest.NewServer(wechattest.Options{RotateAuthorizerRefresh: rotate})
		r := redeemer(srv, "wxauthorizer")
		rt := srv.Authorize(wechattest.DefaultComponentAppID, "wxauthorizer")
		tok, next, err := r.Redeem(ctx, rt)
		if err != nil || !srv.Valid(tok.Value) || (next != "") != rotate {
			t.Fatalf("rotate %v: first redemption %v, rotated %v, %v", rotate, tok, next != "", err)
		}
		_, _, err = r.Redeem(ctx, rt) // again
		if revoked := errors.Is(err, token.ErrRefreshRevoked); revoked != rotate {
			t.Errorf("rotate %v: redeeming the first refresh token again: %v", rotate, err)
		}
		if rotate {
			if _, _, err := r.Redeem(ctx, next); !errors.Is(err, token.ErrRefreshRevoked) {
				t.Errorf("the current refresh token of a revoked authorization: %v", err)
			}
		}
		want := map[string]int{wechattest.EndpointAuthorizerToken: 2 + map[bool]int{true: 1}[rotate],
			wechattest.EndpointAuthorizerRedeemed: 2 - map[bool]int{true: 1}[rotate], wechattest.EndpointAuthorizerRevoked: map[bool]int{true: 1}[rotate]}
		for ep, n := range want {
			if got := srv.Count(ep); got != n {
				t.Errorf("rotate %v: %s = %d, want %d", rotate, ep, got, n)
			}
		}
		srv.Close()
	}
}

func TestAuthorizerTokenRefusals(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Options{})
	defer srv.Close()
	ctx := context.Background()
	old := srv.Authorize(wechattest.DefaultComponentAppID, "wxa")
	cur := srv.Authorize(wechattest.DefaultComponentAppID, "wxa") // renewed
	other := srv.Authorize(wechattest.DefaultComponentAppID, "wxb")
	at, err := fetcher(srv).Fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	classic := &wechat.AuthorizerFetcher{Component: fixedToken(at.Value), ComponentAppID: wechattest.DefaultComponentAppID,
		AuthorizerAppID: "wxa", BaseURL: srv.URL}
	for _, tc := range []struct {
		name string
		run  func() error
		code int
	}{
		{"renewed authorization's token", func() error { _, _, err := redeemer(srv, "wxa").Redeem(ctx, old); return err }, wechat.CodeRefreshTokenInvalid},
		{"another account's token", func() error { _, _, err := redeemer(srv, "wxa").Redeem(ctx, other); return err }, wechat.CodeRefreshTokenInvalid},
		{"not authorized", func() error { _, _, err := redeemer(srv, "wxc").Redeem(ctx, cur); return err }, wechat.CodeNotAuthorized},
		{"an access_token as component token", func() error { _, _, err := classic.Redeem(ctx, cur); return err }, wechat.CodeInvalidCredential},
	} {
		var e *wechat.Error
		if err := tc.run(); !errors.As(err, &e) || e.Code != tc.code {
			t.Errorf("%s: %v, want errcode %d", tc.name, err, tc.code)
		}
	}
	if _, _, err := redeemer(srv, "wxa").Redeem(ctx, cur); err != nil {
		t.Errorf("the current token: %v", err)
	}
	srv.Unauthorize(wechattest.DefaultComponentAppID, "wxa")
	if _, _, err := redeemer(srv, "wxa").Redeem(ctx, cur); !wechat.IsRefreshRevoked(err) || code(err) != wechat.CodeNotAuthorized {
		t.Errorf("after Unauthorize: %v, want 61003", err)
	}
}

// fixedToken is a TokenSource of one token.
type fixedToken string

func (f fixedToken) Token(context.Context) (token.Token, error) {
	return token.Token{Value: string(f), ExpiresAt: time.Now().Add(time.Hour)}, nil
}

func (fixedToken) Invalidate(context.Context, string) error { return nil }

func code(err error) int {
	var e *wechat.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
