package main

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// dialTimeout bounds a connection attempt unless the URL says otherwise
// (dial_timeout=), so that an unreachable Redis is reported quickly.
const dialTimeout = 2 * time.Second

// ConnectError is a Redis that could not be reached, or that refused the
// connection (authentication, ACL). Addr names the server(s) without
// credentials.
type ConnectError struct {
	Addr    string
	Refused bool // the server answered with an error
	Err     error
}

// Error names the server and the cause, never a password.
func (e *ConnectError) Error() string {
	if e.Refused {
		return fmt.Sprintf("Redis at %s refused the connection: %v", e.Addr, e.Err)
	}
	return fmt.Sprintf("cannot reach Redis at %s: %v", e.Addr, e.Err)
}

// Unwrap returns the cause: a dial error, or the server's redis.Error.
func (e *ConnectError) Unwrap() error { return e.Err }

// conn is a connected client with what the commands need to know of it.
type conn struct {
	rdb  redis.UniversalClient
	addr string // for messages: host:port, never a password
	db   int    // 0 on a Cluster
}

// dial makes a client from the flags and checks that Redis answers.
func dial(ctx context.Context, cfg *config) (*conn, error) {
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	if err := c.rdb.Ping(pctx).Err(); err != nil {
		_ = c.rdb.Close()
		var rerr redis.Error
		return nil, &ConnectError{Addr: c.addr, Refused: errors.As(err, &rerr), Err: err}
	}
	return c, nil
}

// newClient makes the client the flags describe, without I/O.
func newClient(cfg *config) (*conn, error) {
	url := cfg.url
	if cfg.cluster != "" {
		o := &redis.ClusterOptions{}
		if url != "" {
			var err error
			if o, err = redis.ParseClusterURL(url); err != nil {
				return nil, urlError(err)
			}
		}
		for _, a := range strings.Split(cfg.cluster, ",") {
			if a = strings.TrimSpace(a); a != "" {
				o.Addrs = append(o.Addrs, a)
			}
		}
		o.DialTimeout = orDefault(o.DialTimeout, dialTimeout)
		o.DialerRetries = max(o.DialerRetries, 1)
		o.ContextTimeoutEnabled, o.DisableIdentity = true, true
		return &conn{rdb: redis.NewClusterClient(o), addr: strings.Join(o.Addrs, ",")}, nil
	}
	if url == "" {
		url = "redis://localhost:6379"
	}
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, urlError(err)
	}
	o.DialTimeout = orDefault(o.DialTimeout, dialTimeout)
	o.DialerRetries = max(o.DialerRetries, 1)
	if o.MaxRetries == 0 {
		o.MaxRetries = 1 // an operator waits for each retry of an unreachable server
	}
	// No CLIENT SETINFO: one command fewer for the operator's ACL.
	o.ContextTimeoutEnabled, o.DisableIdentity = true, true
	return &conn{rdb: redis.NewClient(o), addr: o.Addr, db: o.DB}, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// nodeFor returns the client that serves key: on a Cluster, the primary of
// its slot, so that a pipeline of the credential's keys and TIME run on one
// server (the backoff's deadline is on that server's clock).
func (c *conn) nodeFor(ctx context.Context, key string) (redis.Cmdable, error) {
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		return cc.MasterForKey(ctx, key)
	}
	return c.rdb, nil
}

// scanCount is the COUNT hint of each SCAN: keys examined per round trip.
const scanCount = 1000

// scan calls fn with every key matching match, on every primary of a
// Cluster. fn may be called from several goroutines at once on a Cluster,
// never at once for a standalone server; scan serializes the calls.
func (c *conn) scan(ctx context.Context, match string, fn func(key string)) error {
	var mu sync.Mutex
	one := func(ctx context.Context, node redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, match, scanCount).Result()
			if err != nil {
				return err
			}
			mu.Lock()
			for _, k := range keys {
				fn(k)
			}
			mu.Unlock()
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return one(ctx, node) })
	}
	return one(ctx, c.rdb)
}

// globEscape escapes what SCAN MATCH would take as a pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// urlError reports a -redis URL that go-redis refused. net/url's errors
// quote the whole URL, password included, and their cause can quote part of
// it (a password holding '/' or '?' reads as a port): none is shown.
func urlError(err error) error {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		return errors.New("-redis: not a valid URL (not shown: it may hold a password)")
	}
	return fmt.Errorf("-redis: %w", err)
}
