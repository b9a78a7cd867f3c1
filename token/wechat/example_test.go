package wechat_test

import (
	"context"
	"fmt"
	"net/http"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token/wechat"
	"github.com/tokencache/tokencache/token/wechat/wechattest"
)

func Example() {
	fake := wechattest.NewServer(wechattest.Options{}) // stands in for api.weixin.qq.com
	defer fake.Close()
	mr := miniredis.NewMiniRedis() // stands in for your Redis
	_ = mr.Start()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	store, err := rediscache.New(rdb, rediscache.Options{})
	if err != nil {
		panic(err)
	}
	accessToken, err := store.Source("wechat:"+wechattest.DefaultAppID, &wechat.TokenFetcher{
		AppID: wechattest.DefaultAppID, Secret: wechattest.DefaultSecret, BaseURL: fake.URL,
	})
	if err != nil {
		panic(err)
	}
	defer accessToken.Close()

	// API calls get the shared access_token; a 40001 invalidates it and
	// retries once.
	api := &http.Client{Transport: &wechat.Transport{Tokens: accessToken}}
	resp, err := api.Get(fake.URL + "/cgi-bin/get_api_domain_ip")
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status, fake.Count(wechattest.EndpointToken), "token fetch")

	_, err = (&wechat.TokenFetcher{AppID: wechattest.DefaultAppID, Secret: "wrong", BaseURL: fake.URL}).Fetch(context.Background())
	fmt.Println(wechat.IsPermanent(err), err)
	// Output:
	// 200 OK 1 token fetch
	// true wechat: cgi-bin/token: errcode 40125: invalid appsecret rid: fake-696e7661
}
