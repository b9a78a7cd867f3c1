// Command wechat gets a WeChat official-account access_token and jsapi_ticket
// through tokencache and calls an API with the shared token.
//
// With WECHAT_APPID and WECHAT_APPSECRET set it talks to the real WeChat API
// (or WECHAT_BASE_URL); without them it starts a local fake (wechattest).
// Redis is an embedded miniredis unless -redis names a server.
//
//	go run ./examples/wechat
//	WECHAT_APPID=wx... WECHAT_APPSECRET=... go run ./examples/wechat -redis localhost:6379 -stable
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/wechat"
	"github.com/tokencache/tokencache/token/wechat/wechattest"
)

func main() {
	addr := flag.String("redis", "", "Redis address; empty starts an embedded miniredis")
	useStable := flag.Bool("stable", false, "use the stable access_token endpoint")
	flag.Parse()
	if err := run(context.Background(), *addr, *useStable); err != nil {
		fmt.Fprintln(os.Stderr, "wechat:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, addr string, useStable bool) error {
	appID, secret, baseURL := os.Getenv("WECHAT_APPID"), os.Getenv("WECHAT_APPSECRET"), os.Getenv("WECHAT_BASE_URL")
	if appID == "" || secret == "" {
		srv := wechattest.NewServer(wechattest.Options{})
		defer srv.Close()
		appID, secret, baseURL = wechattest.DefaultAppID, wechattest.DefaultSecret, srv.URL
		fmt.Println("WECHAT_APPID/WECHAT_APPSECRET not set: using a local fake WeChat at", srv.URL)
	}
	if addr == "" {
		mr := miniredis.NewMiniRedis()
		mr.ClockTTL(true)
		if err := mr.Start(); err != nil {
			return err
		}
		defer mr.Close()
		addr = mr.Addr()
	}
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{addr}})
	defer rdb.Close()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)) // never logs a secret or a whole token
	store, err := rediscache.New(rdb, rediscache.Options{Source: token.Options{Logger: logger}})
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 10 * time.Second}

	var fetch token.Fetcher = &wechat.TokenFetcher{AppID: appID, Secret: secret, BaseURL: baseURL, HTTPClient: hc}
	if useStable {
		force, err := store.Limiter("wechat:"+appID, "force_refresh", rediscache.Limit{
			PerDay: wechat.ForceRefreshPerDay, Every: wechat.ForceRefreshInterval, DayOffset: wechat.DayOffset,
		})
		if err != nil {
			return err
		}
		fetch = &wechat.StableTokenFetcher{AppID: appID, Secret: secret, BaseURL: baseURL, HTTPClient: hc, Force: force}
	}
	accessToken, err := store.Source("wechat:"+appID, fetch)
	if err != nil {
		return err
	}
	defer accessToken.Close()
	ticket, err := store.Source("wechat:"+appID+":jsapi_ticket", &wechat.TicketFetcher{Tokens: accessToken, BaseURL: baseURL, HTTPClient: hc})
	if err != nil {
		return err
	}
	defer ticket.Close()

	at, err := accessToken.Token(ctx)
	if err != nil {
		return err
	}
	fmt.Println("access_token:", at) // printed redacted
	tk, err := ticket.Token(ctx)
	if err != nil {
		return err
	}
	fmt.Println("jsapi_ticket:", tk)

	// An API call through the retrying transport: the access_token is added,
	// and a 40001 invalidates it and retries once.
	api := &http.Client{Timeout: 10 * time.Second, Transport: &wechat.Transport{Tokens: accessToken}}
	resp, err := api.Get(base(baseURL) + "/cgi-bin/get_api_domain_ip")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Printf("get_api_domain_ip: %s %s\n", resp.Status, body)
	return nil
}

func base(u string) string {
	if u == "" {
		return wechat.DefaultBaseURL
	}
	return u
}
