package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.DiscardHandler)

// backends are the servers the command is tested on: miniredis, and the
// real standalone server and Cluster when their variables are set.
func backends(t *testing.T, fn func(t *testing.T, b redistest.Backend)) {
	for _, b := range redistest.Backends(t) {
		if len(b.Sentinels) > 0 {
			continue // the command has no Sentinel flags
		}
		t.Run(b.Name, func(t *testing.T) { fn(t, b) })
	}
}

// connFlags are the command's flags for b, with prefix.
func connFlags(b redistest.Backend, prefix string) []string {
	if b.IsCluster() {
		return []string{"-cluster", strings.Join(b.Cluster, ","), "-prefix", prefix}
	}
	return []string{"-redis", "redis://" + b.Addr, "-prefix", prefix}
}

// result is one run of the command.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// runCmd runs the command to completion.
func runCmd(t *testing.T, args ...string) result {
	t.Helper()
	var out, errs bytes.Buffer
	code := runContext(context.Background(), args, &out, &errs)
	return result{out.String(), errs.String(), code}
}

// deployment is what the tests set up with the real library: credentials
// in Redis, and every secret that must never be printed.
type deployment struct {
	prefix  string
	rdb     redis.UniversalClient
	cache   *rediscache.Cache
	plain   *token.Source // "acct": a fetched token and a limiter count
	rotated *token.Source // "rot": a token and refresh state
	secrets []string
}

// deploy stores credentials under a fresh prefix: "acct" (a token, a
// limiter count), "rot" (a token redeemed from a seeded refresh state) and
// "failing" (only a backoff record, from an error holding a secret).
func deploy(t *testing.T, b redistest.Backend) *deployment {
	t.Helper()
	ctx := context.Background()
	d := &deployment{prefix: redistest.Prefix(t), rdb: b.Client(t)}
	var err error
	d.cache, err = rediscache.New(d.rdb, rediscache.Options{Prefix: d.prefix, Source: token.Options{Logger: quiet}})
	if err != nil {
		t.Fatal(err)
	}
	up := tokentest.New(time.Hour)
	d.plain = d.source(t, "acct", up)
	if _, err := d.plain.Token(ctx); err != nil {
		t.Fatal(err)
	}
	lim, _ := d.cache.Limiter("acct", "force_refresh", rediscache.Limit{PerDay: 5})
	if ok, err := lim.Allow(ctx); !ok || err != nil {
		t.Fatalf("Allow = %v, %v", ok, err)
	}
	rot := tokentest.NewRotating(time.Hour)
	d.rotated = d.source(t, "rot", rot)
	seed := rot.Authorize()
	if err := d.rotated.SeedRefresh(ctx, seed); err != nil {
		t.Fatal(err)
	}
	rotTok, err := d.rotated.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	failing := tokentest.New(time.Hour)
	const leaked = "secret=FETCHER-ERROR-SECRET-0123456789"
	failing.FailNext(errors.New("upstream refused " + leaked))
	if _, err := d.source(t, "failing", failing).Token(ctx); err == nil {
		t.Fatal("the failing upstream did not fail")
	}
	d.secrets = append(append(up.Tokens(), seed, rotTok.Value, leaked), d.storedSecrets(t)...)
	return d
}

func (d *deployment) source(t *testing.T, name string, f token.Fetcher) *token.Source {
	t.Helper()
	s, err := d.cache.Source(name, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// storedSecrets returns the secret part of every value stored under the
// prefix (the token after its header, the refresh state), read directly.
func (d *deployment) storedSecrets(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, name := range []string{"acct", "rot", "sealed"} {
		tag := "{" + d.prefix + name + "}"
		raw := []string{d.rdb.Get(ctx, tag+":token").Val(), d.rdb.HGet(ctx, tag+":refresh", "v").Val()}
		for _, v := range raw {
			if f := strings.SplitN(v, "|", 4); len(f) == 4 {
				out = append(out, f[3], v)
			}
		}
	}
	return out
}

// noSecrets fails the test if any output holds a secret.
func noSecrets(t *testing.T, secrets []string, outputs ...string) {
	t.Helper()
	for _, s := range secrets {
		if len(s) < 8 {
			continue
		}
		for _, o := range outputs {
			if strings.Contains(o, s) {
				t.Errorf("output holds the secret %.4s…:\n%s", s, o)
			}
		}
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}
