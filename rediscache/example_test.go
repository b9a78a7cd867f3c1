package rediscache_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

func Example() {
	mr := miniredis.NewMiniRedis() // stands in for your Redis
	_ = mr.Start()
	defer mr.Close()
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{mr.Addr()}})
	defer rdb.Close()

	// How to get a new token from upstream; called by one instance at a time.
	fetches := 0
	fetch := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
		fetches++
		return token.Token{Value: fmt.Sprintf("access-token-%02d-abcdefgh", fetches), ExpiresAt: time.Now().Add(2 * time.Hour)}, nil
	})

	src, err := rediscache.NewSource(rdb, "wechat:wx1234", fetch, rediscache.Options{})
	if err != nil {
		panic(err)
	}
	defer src.Close()

	ctx := context.Background()
	tok, err := src.Token(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println(tok.Value)

	// The upstream said the token is invalid (WeChat errcode 40001).
	_ = src.Invalidate(ctx, tok.Value)
	tok, _ = src.Token(ctx)
	fmt.Println(tok.Value, "after", fetches, "fetches")
	// Output:
	// access-token-01-abcdefgh
	// access-token-02-abcdefgh after 2 fetches
}

func ExampleCache_Source() {
	mr := miniredis.NewMiniRedis()
	_ = mr.Start()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	// One Cache per Redis client serves every credential over one
	// subscription.
	store, err := rediscache.New(rdb, rediscache.Options{Prefix: "myapp:"})
	if err != nil {
		panic(err)
	}
	for _, app := range []string{"wx1111", "wx2222"} {
		src, err := store.Source("wechat:"+app, token.FetcherFunc(func(context.Context) (token.Token, error) {
			return token.Token{Value: "token-for-" + app + "-0123456789", ExpiresAt: time.Now().Add(time.Hour)}, nil
		}))
		if err != nil {
			panic(err)
		}
		defer src.Close()
		tok, _ := src.Token(context.Background())
		fmt.Println(tok.Value)
	}
	// Output:
	// token-for-wx1111-0123456789
	// token-for-wx2222-0123456789
}
