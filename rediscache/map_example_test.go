package rediscache_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// A token.Map holds a Source per key, made on first use and evicted when
// idle; all of them share the Cache's single subscription.
func ExampleCache_Source_tokenMap() {
	mr := miniredis.NewMiniRedis() // stands in for your Redis
	_ = mr.Start()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	cache, err := rediscache.New(rdb, rediscache.Options{Prefix: "myapp:"})
	if err != nil {
		panic(err)
	}

	// fetcherFor gets the token of one authorized account, e.g. with its
	// refresh token; called by one instance at a time per account.
	var mu sync.Mutex
	fetches := map[string]int{}
	fetcherFor := func(appID string) token.Fetcher {
		return token.FetcherFunc(func(context.Context) (token.Token, error) {
			mu.Lock()
			defer mu.Unlock()
			fetches[appID]++
			return token.Token{Value: fmt.Sprintf("%s-token-%d-abcdefgh", appID, fetches[appID]), ExpiresAt: time.Now().Add(2 * time.Hour)}, nil
		})
	}
	authorizers, err := token.NewMap(func(_ context.Context, appID string) (*token.Source, error) {
		return cache.Source("wechat:authorizer:"+appID, fetcherFor(appID))
	}, token.MapOptions{})
	if err != nil {
		panic(err)
	}
	defer authorizers.Close()

	ctx := context.Background()
	tok, _ := authorizers.Token(ctx, "wx1111")
	fmt.Println(tok.Value)
	// The upstream rejected it (WeChat errcode 40001): report it by key.
	_ = authorizers.Invalidate(ctx, "wx1111", tok.Value)
	tok, _ = authorizers.Token(ctx, "wx1111")
	fmt.Println(tok.Value)
	tok, _ = authorizers.Token(ctx, "wx2222")
	fmt.Println(tok.Value, "-", authorizers.Len(), "credentials")
	// Output:
	// wx1111-token-1-abcdefgh
	// wx1111-token-2-abcdefgh
	// wx2222-token-1-abcdefgh - 2 credentials
}
