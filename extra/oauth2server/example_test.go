package oauth2server_test

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/extra/oauth2server"
)

// A user authorizes an app, the app refreshes once, and then presents the
// refresh token it already redeemed: fosite refuses it and revokes every
// token of that authorization.
func Example() {
	srv := oauth2server.New(oauth2server.Options{
		Clients: []oauth2server.Client{{
			ID: "app", Secret: "app-secret",
			Grants: []string{"authorization_code", "refresh_token"},
		}},
	})
	defer srv.Close()
	ctx := context.Background()

	first, err := srv.AuthorizeUser(ctx, "app", "alice")
	if err != nil {
		panic(err)
	}
	cfg := srv.Config("app")
	second, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: first.RefreshToken}).Token()
	if err != nil {
		panic(err)
	}
	fmt.Println("rotated:", second.RefreshToken != first.RefreshToken)

	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: first.RefreshToken}).Token()
	var re *oauth2.RetrieveError
	fmt.Println("reuse:", errors.As(err, &re) && re.ErrorCode == "invalid_grant")
	fmt.Println("newest still valid:", srv.Valid(second.AccessToken) || srv.RefreshActive(second.RefreshToken))
	fmt.Println("families revoked:", srv.Stats().ReuseRevocations)
	// Output:
	// rotated: true
	// reuse: true
	// newest still valid: false
	// families revoked: 1
}
