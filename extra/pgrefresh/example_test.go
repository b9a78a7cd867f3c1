package pgrefresh_test

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"os"

	_ "github.com/jackc/pgx/v5/stdlib" // or any PostgreSQL driver for database/sql

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/extra/pgrefresh"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// authorizerRedeemer stands for the credential's token.Redeemer (such as
// wechat's authorizer fetcher).
var authorizerRedeemer token.Redeemer

// Keep a credential's rotating refresh token in PostgreSQL: seed it from
// the application's authorization callback, and give the Store to
// rediscache as the place of every credential's refresh state. (It needs
// servers, so it is compiled but not run.)
func Example() {
	ctx := context.Background()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	store, err := pgrefresh.New(db, pgrefresh.Options{})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.CreateTable(ctx); err != nil { // or apply store.Schema() in a migration
		log.Fatal(err)
	}
	cred, err := store.Credential("wechat-open:wx0123456789")
	if err != nil {
		log.Fatal(err)
	}

	// In the authorization callback: the first refresh token, under a
	// generation that fences any refresh of an earlier authorization.
	if _, err := cred.SeedRefresh(ctx, os.Getenv("AUTHORIZER_REFRESH_TOKEN")); err != nil {
		log.Fatal(err)
	}

	// Sources of the Cache whose Fetcher is a token.Redeemer load, redeem
	// and commit their state in PostgreSQL; access tokens stay in Redis.
	cache, err := rediscache.New(redis.NewClient(&redis.Options{Addr: os.Getenv("REDIS_ADDR")}),
		rediscache.Options{RefreshStores: store.RefreshStore})
	if err != nil {
		log.Fatal(err)
	}
	src, err := cache.Source("wechat-open:wx0123456789", authorizerRedeemer)
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	st, err := cred.LoadRefresh(ctx)
	switch {
	case errors.Is(err, token.ErrNoRefreshState):
		log.Print("not authorized yet")
	case err != nil:
		log.Fatal(err)
	default:
		log.Printf("refresh state at generation %d", st.Generation) // never log st.Value
	}

	// When the account revokes the authorization:
	if err := cred.DeleteRefresh(ctx); err != nil {
		log.Fatal(err)
	}
}
