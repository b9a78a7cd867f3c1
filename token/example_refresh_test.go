package token_test

import (
	"context"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// A credential refreshed with a rotating refresh token, such as an OAuth2
// refresh token with reuse detection or WeChat Open Platform's
// authorizer_refresh_token: two instances that redeem the same one would
// get the whole family revoked.
func ExampleSource_SeedRefresh() {
	server := tokentest.NewRotating(time.Hour) // an authorization server that rotates refresh tokens
	st := tokentest.NewStore()                 // rediscache.Cache.Credential in production; or a durable RefreshStore (extra/pgrefresh) in Options.RefreshStore
	var srcs []*token.Source
	for range 3 { // three instances
		s, err := token.NewSource("authorizer:wx1234", server, st, st, token.Options{})
		if err != nil {
			panic(err)
		}
		defer s.Close()
		srcs = append(srcs, s)
	}
	ctx := context.Background()

	// In the authorization callback: the first refresh state.
	if err := srcs[0].SeedRefresh(ctx, server.Authorize()); err != nil {
		panic(err)
	}
	for _, s := range srcs {
		tok, err := s.Token(ctx)
		fmt.Println(server.Valid(tok.Value), err)
	}
	fmt.Println("redemptions:", server.Redemptions(), "revocations:", server.Revocations())
	// Output:
	// true <nil>
	// true <nil>
	// true <nil>
	// redemptions: 1 revocations: 0
}
