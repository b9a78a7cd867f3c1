// Command oauth2 shares one OAuth2 client-credentials token among several
// instances of a service through Redis, and compares the token-endpoint
// calls with plain golang.org/x/oauth2: clientcredentials.Config (one per
// API call) and a ReuseTokenSource per instance (one per instance and
// token lifetime).
//
// With OAUTH2_TOKEN_URL, OAUTH2_CLIENT_ID and OAUTH2_CLIENT_SECRET (and
// OAUTH2_API_URL, an API that takes the token) set it talks to your
// authorization server; without them it starts a local fake (oauthtest)
// whose tokens live 12 s. Redis is an embedded miniredis unless -redis
// names a server.
//
//	go run ./examples/oauth2
//	go run ./examples/oauth2 -instances 8 -goroutines 64 -duration 20s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/oauth"
	"github.com/tokencache/tokencache/token/oauth/oauthtest"
)

type config struct {
	redis                string
	instances, workers   int
	duration             time.Duration
	tokenURL, id, secret string
	api                  string
	calls                func() int // token endpoint calls so far, or nil
}

func main() {
	var c config
	flag.StringVar(&c.redis, "redis", "", "Redis address; empty starts an embedded miniredis")
	flag.IntVar(&c.instances, "instances", 4, "instances of the service")
	flag.IntVar(&c.workers, "goroutines", 16, "goroutines calling the API in each instance")
	flag.DurationVar(&c.duration, "duration", 6*time.Second, "how long each way runs")
	flag.Parse()
	if err := run(&c); err != nil {
		fmt.Fprintln(os.Stderr, "oauth2:", err)
		os.Exit(1)
	}
}

func run(c *config) error {
	c.tokenURL, c.id, c.secret, c.api = os.Getenv("OAUTH2_TOKEN_URL"), os.Getenv("OAUTH2_CLIENT_ID"), os.Getenv("OAUTH2_CLIENT_SECRET"), os.Getenv("OAUTH2_API_URL")
	if c.tokenURL == "" {
		srv := oauthtest.NewServer(oauthtest.Options{Lifetime: 12 * time.Second})
		defer srv.Close()
		c.tokenURL, c.id, c.secret, c.api = srv.TokenURL(), "client", "secret", srv.URL+oauthtest.APIPath
		c.calls = func() int { return srv.Grants("client_credentials") }
		fmt.Println("OAUTH2_TOKEN_URL not set: using a local fake authorization server with 12 s tokens at", srv.URL)
	}
	if c.redis == "" {
		mr := miniredis.NewMiniRedis()
		mr.ClockTTL(true)
		if err := mr.Start(); err != nil {
			return err
		}
		defer mr.Close()
		c.redis = mr.Addr()
	}
	cfg := &clientcredentials.Config{ClientID: c.id, ClientSecret: c.secret, TokenURL: c.tokenURL, AuthStyle: oauth2.AuthStyleInHeader}
	for _, way := range []struct {
		name   string
		client func(instance int) (*http.Client, func(), error)
	}{
		{"tokencache (one token for the cluster)", c.shared(cfg)},
		{"x/oauth2 ReuseTokenSource (one per instance)", perInstance(cfg)},
		{"x/oauth2 clientcredentials.Config.Token (one per call)", perCall(cfg)},
	} {
		before := c.count()
		calls, failed, err := c.load(way.client)
		if err != nil {
			return err
		}
		fmt.Printf("%-56s %6d API calls, %d failed, %s\n", way.name, calls, failed, c.fetches(before))
	}
	return nil
}

func (c *config) count() int {
	if c.calls == nil {
		return 0
	}
	return c.calls()
}

func (c *config) fetches(before int) string {
	if c.calls == nil {
		return "token endpoint calls: see your server"
	}
	return fmt.Sprintf("%d token endpoint calls", c.calls()-before)
}

// shared gives each instance a Cache of its own (its own Redis client),
// as separate processes would have.
func (c *config) shared(cfg *clientcredentials.Config) func(int) (*http.Client, func(), error) {
	return func(int) (*http.Client, func(), error) {
		rdb := redis.NewClient(&redis.Options{Addr: c.redis, ContextTimeoutEnabled: true})
		cache, err := rediscache.New(rdb, rediscache.Options{Source: tokenOptions()})
		if err != nil {
			return nil, nil, err
		}
		src, err := cache.Source(oauth.Name(cfg), &oauth.ClientCredentials{Config: cfg})
		if err != nil {
			return nil, nil, err
		}
		return &http.Client{Transport: &oauth.Transport{Tokens: src}}, func() { src.Close(); rdb.Close() }, nil
	}
}

func perInstance(cfg *clientcredentials.Config) func(int) (*http.Client, func(), error) {
	return func(int) (*http.Client, func(), error) {
		return oauth2.NewClient(context.Background(), cfg.TokenSource(context.Background())), func() {}, nil
	}
}

func perCall(cfg *clientcredentials.Config) func(int) (*http.Client, func(), error) {
	return func(int) (*http.Client, func(), error) {
		return &http.Client{Transport: &oauth2.Transport{Source: callSource{cfg}}}, func() {}, nil
	}
}

// callSource fetches a token for every call, as code that calls
// clientcredentials.Config.Token directly does.
type callSource struct{ cfg *clientcredentials.Config }

func (s callSource) Token() (*oauth2.Token, error) { return s.cfg.Token(context.Background()) }

// load runs the instances' goroutines against the API for c.duration.
func (c *config) load(client func(int) (*http.Client, func(), error)) (calls, failed int64, err error) {
	var n, bad atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(c.duration)
	for i := range c.instances {
		hc, stop, err := client(i)
		if err != nil {
			return 0, 0, err
		}
		defer stop()
		for range c.workers {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					n.Add(1)
					if !call(hc, c.api) {
						bad.Add(1)
					}
					time.Sleep(10 * time.Millisecond) // a service's pace, not a benchmark's
				}
			})
		}
	}
	wg.Wait()
	return n.Load(), bad.Load(), nil
}

func call(hc *http.Client, url string) bool {
	resp, err := hc.Get(url)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

func tokenOptions() token.Options {
	return token.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
}
