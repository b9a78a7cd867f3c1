package oauth_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token/oauth"
	"github.com/tokencache/tokencache/token/oauth/oauthtest"
)

// Every instance of a service shares one client-credentials token through
// Redis, and calls the API through Transport, which retries once with a new
// token when the API says the token is invalid.
func ExampleClientCredentials() {
	idp := oauthtest.NewServer(oauthtest.Options{}) // your authorization server
	defer idp.Close()
	mr, err := miniredis.Run() // your Redis
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	cache, err := rediscache.New(rdb, rediscache.Options{})
	if err != nil {
		log.Fatal(err)
	}

	cfg := &clientcredentials.Config{
		ClientID: "client", ClientSecret: "secret", TokenURL: idp.TokenURL(),
		Scopes: []string{"read"}, AuthStyle: oauth2.AuthStyleInHeader,
	}
	src, err := cache.Source(oauth.Name(cfg), &oauth.ClientCredentials{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	api := &http.Client{Transport: &oauth.Transport{Tokens: src}}
	resp, err := api.Get(idp.URL + oauthtest.APIPath)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))

	// Code that takes an oauth2.TokenSource gets one backed by the cluster's
	// token (wrap it in oauth2.Transport, not oauth2.NewClient).
	tok, err := oauth.TokenSource(src, 0).Token()
	fmt.Println(tok.Valid(), err)
	// Output:
	// 200 ok
	// true <nil>
}

// A user's tokens, refreshed with a refresh token the server rotates: seed
// the credential from the authorization-code exchange; the cluster then
// redeems each refresh token once.
func ExampleRefresher() {
	idp := oauthtest.NewServer(oauthtest.Options{})
	defer idp.Close()
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	cache, err := rediscache.New(rdb, rediscache.Options{})
	if err != nil {
		log.Fatal(err)
	}
	cfg := &oauth2.Config{ClientID: "client", ClientSecret: "secret",
		Endpoint: oauth2.Endpoint{TokenURL: idp.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader}}
	src, err := cache.Source(oauth.UserName(cfg, "alice"), &oauth.Refresher{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	// In the OAuth2 callback: tok, err := cfg.Exchange(ctx, code), then
	ctx := context.Background()
	if err := src.SeedRefresh(ctx, idp.Authorize() /* tok.RefreshToken */); err != nil {
		log.Fatal(err)
	}
	tok, err := src.Token(ctx)
	fmt.Println(idp.Valid(tok.Value), err)
	// Output: true <nil>
}
