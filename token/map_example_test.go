package token_test

import (
	"context"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func ExampleNewMap() {
	// A store per credential stands in for Redis: in production the
	// factory returns cache.Source(name, fetcher) of a rediscache.Cache.
	stores := map[string]*tokentest.Store{"wx1111": tokentest.NewStore(), "wx2222": tokentest.NewStore()}
	fetches := 0
	fetcherFor := func(appID string) token.Fetcher {
		return token.FetcherFunc(func(context.Context) (token.Token, error) {
			fetches++
			return token.Token{Value: "token-of-" + appID + "-0123456789", ExpiresAt: time.Now().Add(2 * time.Hour)}, nil
		})
	}
	authorizers, err := token.NewMap(func(_ context.Context, appID string) (*token.Source, error) {
		st, ok := stores[appID]
		if !ok {
			return nil, fmt.Errorf("%q has not authorized us", appID)
		}
		return token.NewSource("wechat:authorizer:"+appID, fetcherFor(appID), st, st, token.Options{})
	}, token.MapOptions{})
	if err != nil {
		panic(err)
	}
	defer authorizers.Close()

	ctx := context.Background()
	for _, appID := range []string{"wx1111", "wx2222", "wx1111"} {
		tok, err := authorizers.Token(ctx, appID)
		fmt.Println(tok.Value, err)
	}
	_, err = authorizers.Token(ctx, "wx9999") // the factory's error; tried again on the next call
	fmt.Println(err)
	fmt.Println(authorizers.Len(), "credentials,", fetches, "fetches")
	// Output:
	// token-of-wx1111-0123456789 <nil>
	// token-of-wx2222-0123456789 <nil>
	// token-of-wx1111-0123456789 <nil>
	// token: map: wx9999: "wx9999" has not authorized us
	// 2 credentials, 2 fetches
}
