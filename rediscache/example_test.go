package rediscache_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/wechat"
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

func ExampleKeyring() {
	mr := miniredis.NewMiniRedis()
	_ = mr.Start()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	fetches := 0
	fetch := token.FetcherFunc(func(context.Context) (token.Token, error) {
		fetches++
		return token.Token{Value: fmt.Sprintf("secret-token-%d-0123456789", fetches), ExpiresAt: time.Now().Add(time.Hour)}, nil
	})
	ctx := context.Background()

	// Every instance gets the same keys (32 random bytes each, from your
	// secret store); Current seals new values.
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	store, err := rediscache.New(rdb, rediscache.Options{Encryption: &rediscache.Keyring{
		Current: "k1", Keys: map[string][]byte{"k1": k1},
	}})
	if err != nil {
		panic(err)
	}
	src, err := store.Source("wechat:wx1234", fetch)
	if err != nil {
		panic(err)
	}
	defer src.Close()
	tok, _ := src.Token(ctx)

	raw, _ := mr.Get("{tokencache:wechat:wx1234}:token")
	f := strings.Split(raw, "|")
	fmt.Println("stored:", f[0], "key", f[3], "holds the token:", strings.Contains(raw, tok.Value))

	// Rotation, step 2: the new key is in every instance's Keys (step 1) and
	// becomes Current as instances restart. Values sealed with k1 are still
	// read; the next refresh seals with k2. Step 3 drops k1.
	_ = src.Close()
	rotated, err := rediscache.New(rdb, rediscache.Options{Encryption: &rediscache.Keyring{
		Current: "k2", Keys: map[string][]byte{"k1": k1, "k2": k2},
	}})
	if err != nil {
		panic(err)
	}
	src2, err := rotated.Source("wechat:wx1234", fetch)
	if err != nil {
		panic(err)
	}
	defer src2.Close()
	tok2, _ := src2.Token(ctx)
	fmt.Println("read with k1:", tok2.Value == tok.Value, "fetches:", fetches)

	_ = src2.Invalidate(ctx, tok2.Value) // the upstream rejected it: refresh
	tok2, _ = src2.Token(ctx)
	// The refresher serves the new token as soon as the upstream issues
	// it, and shares it right after: wait for the write to land.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if raw, _ = mr.Get("{tokencache:wechat:wx1234}:token"); strings.Count(raw, "|") >= 4 {
			break
		}
	}
	fmt.Println("after a refresh: key", strings.Split(raw, "|")[3], "holds the token:", strings.Contains(raw, tok2.Value))
	// Output:
	// stored: e key k1 holds the token: false
	// read with k1: true fetches: 1
	// after a refresh: key k2 holds the token: false
}

func ExampleCache_Limiter() {
	mr := miniredis.NewMiniRedis()
	_ = mr.Start()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	store, err := rediscache.New(rdb, rediscache.Options{})
	if err != nil {
		panic(err)
	}

	// WeChat's stable token allows force_refresh 20 times a day (counted in
	// UTC+8), 30 s apart. The count lives in Redis, so the whole cluster
	// shares it. Here: 2 a day, to see the day's limit.
	force, err := store.Limiter("wechat:wx1234", "force_refresh", rediscache.Limit{
		PerDay: 2, Every: 31 * time.Second, DayOffset: 8 * time.Hour,
	})
	if err != nil {
		panic(err)
	}
	// The stable-token fetcher forces a refresh only when the token was
	// reported invalid, and only if force allows it.
	_ = &wechat.StableTokenFetcher{AppID: "wx1234", Secret: "app-secret", Force: force}

	ctx := context.Background()
	start := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC) // 18:00 in UTC+8; the Redis server's clock counts
	for _, at := range []struct {
		after time.Duration
		why   string
	}{
		{0, "first today"},
		{10 * time.Second, "less than 31s after the last"},
		{31 * time.Second, "second today"},
		{2 * time.Minute, "2 a day already"},
		{14 * time.Hour, "a new day in UTC+8"},
	} {
		mr.SetTime(start.Add(at.after))
		ok, err := force.Allow(ctx)
		if err != nil {
			panic(err)
		}
		fmt.Printf("+%v %v (%s)\n", at.after, ok, at.why)
	}
	// Output:
	// +0s true (first today)
	// +10s false (less than 31s after the last)
	// +31s true (second today)
	// +2m0s false (2 a day already)
	// +14h0m0s true (a new day in UTC+8)
}
