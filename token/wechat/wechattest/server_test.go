package wechattest_test

import (
	"context"
	"testing"

	"go.uber.org/goleak"

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
