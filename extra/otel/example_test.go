package tokencacheotel_test

import (
	"context"
	"log"

	"github.com/redis/go-redis/v9"

	tokencacheotel "github.com/tokencache/tokencache/extra/otel"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// fetcher stands for the upstream's token endpoint.
var fetcher token.Fetcher

// The hooks go once in the Cache's options; each Source is tracked for
// tokencache.token.remaining_lifetime.
func Example() {
	m, err := tokencacheotel.New() // the global MeterProvider
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	cache, err := rediscache.New(rdb, rediscache.Options{Source: token.Options{Hooks: m.Hooks()}})
	if err != nil {
		log.Fatal(err)
	}
	src, err := cache.Source("wechat:app", fetcher)
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	defer m.Track("wechat:app", src)()
}

// A token.Map's Sources are tracked as they are made; a Source the Map
// evicts is forgotten once garbage collected, without untrack.
func ExampleMetrics_Track_map() {
	m, err := tokencacheotel.New(tokencacheotel.WithCredentialAttribute())
	if err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	cache, err := rediscache.New(rdb, rediscache.Options{Source: token.Options{Hooks: m.Hooks()}})
	if err != nil {
		log.Fatal(err)
	}
	tokens, err := token.NewMap(func(ctx context.Context, key string) (*token.Source, error) {
		name := "wechat:authorizer:" + key
		src, err := cache.Source(name, fetcher)
		if err == nil {
			m.Track(name, src)
		}
		return src, err
	}, token.MapOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer tokens.Close()
}
