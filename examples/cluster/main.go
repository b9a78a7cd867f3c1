// Command cluster shows several instances of a service sharing one upstream
// token through Redis, and counts what the upstream saw.
//
// It runs an embedded Redis (miniredis) unless -redis names a real server,
// and a strict fake upstream: every fetch invalidates the previous token, as
// WeChat's access_token endpoint does. With -naive it runs the same load
// again with a per-instance cache, which is what most SDKs do, so the
// difference shows in one table.
//
//	go run ./examples/cluster
//	go run ./examples/cluster -naive -instances 3
//	go run ./examples/cluster -redis 127.0.0.1:6379
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func main() {
	var (
		addr       = flag.String("redis", "", "Redis address (host:port); empty starts an embedded miniredis")
		instances  = flag.Int("instances", 8, "instances of the service, each with its own Redis client")
		goroutines = flag.Int("goroutines", 64, "goroutines calling Token in each instance")
		lifetime   = flag.Duration("lifetime", time.Second, "token lifetime at the fake upstream")
		lifetimes  = flag.Int("lifetimes", 6, "how many lifetimes to run for")
		latency    = flag.Duration("latency", 20*time.Millisecond, "upstream fetch latency")
		think      = flag.Duration("think", time.Millisecond, "work a caller does between two Token calls")
		naive      = flag.Bool("naive", false, "also run the same load with a per-instance cache")
		verbose    = flag.Bool("v", false, "log what tokencache does")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, config{*addr, *instances, *goroutines, *lifetime, *lifetimes, *latency, *think, *naive, *verbose}); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

type config struct {
	addr                  string
	instances, goroutines int
	lifetime              time.Duration
	lifetimes             int
	latency, think        time.Duration
	naive, verbose        bool
}

func run(ctx context.Context, c config) error {
	if c.instances < 1 || c.goroutines < 1 || c.lifetimes < 1 || c.lifetime < 100*time.Millisecond {
		return fmt.Errorf("need at least 1 instance, 1 goroutine, 1 lifetime of 100ms or more")
	}
	where := c.addr
	if c.addr == "" {
		mr := miniredis.NewMiniRedis()
		mr.ClockTTL(true) // let TTLs run on the wall clock
		if err := mr.Start(); err != nil {
			return err
		}
		defer mr.Close()
		c.addr, where = mr.Addr(), "embedded miniredis at "+mr.Addr()
	}
	logger := slog.New(slog.DiscardHandler)
	if c.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d := time.Duration(c.lifetimes) * c.lifetime
	fmt.Printf("%d instances × %d goroutines for %v (%d lifetimes of %v); Redis: %s\n",
		c.instances, c.goroutines, d, c.lifetimes, c.lifetime, where)
	fmt.Printf("strict upstream: each fetch invalidates the previous token; callers report invalid tokens and get a new one\n\n")

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cache\tlifetimes\tideal fetches\tupstream fetches\tToken calls\tinvalid tokens\tinvalid %\tToken p50\tToken p99\t")

	// tokencache: one token in Redis, one refresher at a time.
	up := newUpstream(c)
	prefix := "tokencache-demo:" + runID() + ":" // one credential for all instances
	var srcs []*token.Source
	for range c.instances {
		rdb := redis.NewClient(&redis.Options{Addr: c.addr})
		defer rdb.Close()
		src, err := rediscache.NewSource(rdb, "wechat:demo", up, rediscache.Options{
			Prefix: prefix,
			Source: token.Options{Logger: logger, RefreshAhead: refreshAhead, MinRefreshAhead: time.Millisecond},
		})
		if err != nil {
			return err
		}
		defer src.Close()
		srcs = append(srcs, src)
	}
	res := tokentest.Load(ctx, srcs, load(c, up))
	row(tw, "tokencache", c, up, res)

	if c.naive {
		up := newUpstream(c)
		var caches []*naiveCache
		for range c.instances {
			caches = append(caches, &naiveCache{f: up, ahead: time.Duration(float64(c.lifetime) * refreshAhead)})
		}
		res := tokentest.Load(ctx, caches, load(c, up))
		row(tw, "naive", c, up, res)
	}
	return tw.Flush()
}

// refreshAhead is the fraction of a lifetime before expiry at which both
// caches refresh.
const refreshAhead = 0.2

// ideal is the fewest fetches that keep a token valid for d: one, then one
// per lifetime less the refresh-ahead window.
func ideal(c config) int {
	d := time.Duration(c.lifetimes) * c.lifetime
	return 1 + int(d/time.Duration(float64(c.lifetime)*(1-refreshAhead)))
}

func newUpstream(c config) *tokentest.Upstream {
	up := tokentest.New(c.lifetime)
	up.Latency = c.latency
	return up
}

func load(c config, up *tokentest.Upstream) tokentest.LoadConfig {
	return tokentest.LoadConfig{
		Goroutines: c.goroutines,
		Duration:   time.Duration(c.lifetimes) * c.lifetime,
		Think:      c.think,
		Upstream:   up,
		Invalidate: true,
	}
}

func row(tw *tabwriter.Writer, name string, c config, up *tokentest.Upstream, r tokentest.Result) {
	pct := 0.0
	if r.Calls > 0 {
		pct = 100 * float64(r.Invalid) / float64(r.Calls)
	}
	fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%.2f%%\t%v\t%v\t\n",
		name, c.lifetimes, ideal(c), up.Calls(), r.Calls, r.Invalid, pct, r.P50, r.P99)
	if r.Errors > 0 {
		fmt.Fprintf(tw, "%s errors: %d, first: %v\t\t\t\t\t\t\t\t\n", name, r.Errors, r.FirstErr)
	}
}

func runID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
