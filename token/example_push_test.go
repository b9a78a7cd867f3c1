package token_test

import (
	"context"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// A pushed credential, such as WeChat Open Platform's
// component_verify_ticket: the upstream pushes it every 10 minutes to
// whichever instance its load balancer picks, and a late push must not
// replace a newer one.
func ExampleSource_Offer() {
	st := tokentest.NewStore() // rediscache.Cache.Credential in production
	ask := func(context.Context) error {
		// e.g. POST /cgi-bin/component/api_start_push_ticket, rationed
		// with a rediscache.Limiter
		return nil
	}
	ticket, err := token.NewSource("wechat:component:ticket", token.AwaitPush(ask), st, st, token.Options{})
	if err != nil {
		panic(err)
	}
	defer ticket.Close()
	ctx := context.Background()

	// In the push handler, after checking the message's signature:
	for _, push := range []token.Push{
		{Value: "ticket@@@pushed-at-1700000600", Order: 1700000600, Lifetime: 12 * time.Hour, MaxLead: 86400},
		{Value: "ticket@@@pushed-at-1700000000", Order: 1700000000, Lifetime: 12 * time.Hour, MaxLead: 86400}, // late
	} {
		stored, err := ticket.Offer(ctx, push)
		fmt.Println(push.Order, stored, err)
	}
	tok, _ := ticket.Token(ctx)
	fmt.Println(tok.Value)
	// Output:
	// 1700000600 true <nil>
	// 1700000000 false <nil>
	// ticket@@@pushed-at-1700000600
}
