package token_test

import (
	"context"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func ExampleNewSource() {
	// tokentest.Store stands in for a shared store; use package rediscache
	// in production.
	shared := tokentest.NewStore()
	f := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
		return token.Token{Value: "0123456789abcdef-token", ExpiresAt: time.Now().Add(time.Hour)}, nil
	})
	a, err := token.NewSource("partner-api", f, shared, shared, token.Options{})
	if err != nil {
		panic(err)
	}
	defer a.Close()
	b, _ := token.NewSource("partner-api", f, shared, shared, token.Options{})
	defer b.Close()

	ta, _ := a.Token(context.Background())
	tb, _ := b.Token(context.Background()) // read from the shared store, not fetched
	fmt.Println(ta.Value == tb.Value)
	fmt.Printf("%v\n", token.Token{Value: ta.Value}) // printing a Token redacts it
	// Output:
	// true
	// token.Token{Value:0123…[22 chars], ExpiresAt:0001-01-01T00:00:00Z}
}
