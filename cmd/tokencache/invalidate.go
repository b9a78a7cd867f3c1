package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// runInvalidate removes the credential's token if it still has the version
// given, with the library's own compare-before-invalidate script, which
// also publishes the invalidation: every instance drops the token and one
// fetches a new one. A token that was already replaced is left alone.
func runInvalidate(ctx context.Context, cfg *config, args []string, stdout, stderr io.Writer) int {
	var version int64
	pos, code, ok := commandFlags(cfg, "invalidate", "NAME -version V", args, stderr, 1, 1, func(fs *flag.FlagSet) {
		fs.Int64Var(&version, "version", 0, "the token version to invalidate (from status)")
	})
	if !ok {
		return code
	}
	name := pos[0]
	if version <= 0 {
		fmt.Fprintln(stderr, "tokencache invalidate: -version V is required (a positive version, as status shows it)")
		return exitError
	}
	c, code := connect(ctx, cfg, stderr)
	if c == nil {
		return code
	}
	defer c.rdb.Close()
	cache, err := rediscache.New(c.rdb, rediscache.Options{
		Prefix: cfg.prefix, LegacyEvents: cfg.legacy,
		Source: token.Options{Logger: slog.New(slog.NewTextHandler(stderr, nil))},
	})
	if err != nil {
		fmt.Fprintf(stderr, "tokencache invalidate: %v\n", err)
		return exitError
	}
	cred, err := cache.Credential(name)
	if err != nil {
		fmt.Fprintf(stderr, "tokencache invalidate: %v\n", err)
		return exitError
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	done, err := cred.Invalidate(ctx, version)
	if err != nil {
		fmt.Fprintf(stderr, "tokencache invalidate: %v\n", err)
		return exitError
	}
	if done {
		fmt.Fprintf(stdout, "invalidated %s version %d\n", name, version)
		return exitOK
	}
	fmt.Fprintf(stdout, "not invalidated: version %d is not the stored one (%s)\n", version, stored(ctx, c, cfg.prefix, name))
	return exitNotInvalidated
}

// stored describes the stored token's version, for a refused invalidation.
func stored(ctx context.Context, c *conn, prefix, name string) string {
	v, err := c.rdb.Get(ctx, tag(prefix, name)+":token").Result()
	switch {
	case err == redis.Nil:
		return "no token stored"
	case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
		return "stored: a key of the wrong type"
	case err != nil:
		return "stored: unknown: " + err.Error()
	}
	h, err := parseHeader(v)
	if err != nil {
		return "stored: " + err.Error()
	}
	return fmt.Sprintf("stored: %d", h.version)
}
