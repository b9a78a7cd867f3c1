package wechat_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/wechat"
	"github.com/tokencache/tokencache/token/wechat/wechattest"
)

// A WeChat Open Platform third-party platform calls the API on behalf of the
// accounts that authorized it: one shared component_access_token, and per
// account an authorizer_access_token redeemed with its
// authorizer_refresh_token, which Redis keeps durably (no TTL).
func ExampleAuthorizerFetcher() {
	fake := wechattest.NewServer(wechattest.Options{}) // stands in for api.weixin.qq.com
	defer fake.Close()
	mr, _ := miniredis.Run() // stands in for your Redis
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	cache, err := rediscache.New(rdb, rediscache.Options{})
	if err != nil {
		panic(err)
	}
	const platform, account = wechattest.DefaultComponentAppID, "wx5678authorizer"
	ctx := context.Background()

	// VerifyTicket returns the latest component_verify_ticket WeChat pushed
	// (every 10 minutes) to the authorization event URL.
	component, err := cache.Source("wechat-component:"+platform, &wechat.ComponentTokenFetcher{
		ComponentAppID: platform, Secret: wechattest.DefaultComponentSecret, BaseURL: fake.URL,
		VerifyTicket: func(context.Context) (string, error) { return fake.VerifyTicket(), nil },
	})
	if err != nil {
		panic(err)
	}
	defer component.Close()

	// One Source per authorized account.
	authorizer, err := cache.Source("wechat-authorizer:"+platform+":"+account, &wechat.AuthorizerFetcher{
		Component: component, ComponentAppID: platform, AuthorizerAppID: account, BaseURL: fake.URL,
	})
	if err != nil {
		panic(err)
	}
	defer authorizer.Close()

	// In the authorization callback, api_query_auth exchanges the auth_code
	// for authorization_info.authorizer_refresh_token: seed it, once.
	refreshToken := fake.Authorize(platform, account) // stands in for that exchange
	if err := authorizer.SeedRefresh(ctx, refreshToken); err != nil {
		panic(err)
	}

	// Calls on behalf of the account carry its authorizer_access_token.
	api := &http.Client{Transport: &wechat.Transport{Tokens: authorizer}}
	resp, err := api.Get(fake.URL + "/cgi-bin/get_api_domain_ip")
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status, fake.Count(wechattest.EndpointAuthorizerRedeemed), "redemption")

	// The account revokes the authorization: redemptions fail until SeedRefresh.
	fake.Unauthorize(platform, account)
	tok, _ := authorizer.Token(ctx)
	_ = authorizer.Invalidate(ctx, tok.Value)
	_, err = authorizer.Token(ctx)
	fmt.Println(errors.Is(err, token.ErrRefreshRevoked), wechat.IsPermanent(err))
	// Output:
	// 200 OK 1 redemption
	// true true
}
