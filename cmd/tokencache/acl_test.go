package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// The operator's ACL, as documented: readACL lets list, status and watch
// run; invalidateACL adds what invalidate's script sends. On a Cluster,
// clusterACL too (go-redis asks for the slots); on a DB other than 0,
// +select.
const (
	readACL       = "+hello +ping +scan +get +pttl +hgetall +hget +hexists +time +subscribe"
	invalidateACL = "+evalsha +eval +type +hmget +hset +del +publish"
	clusterACL    = "+cluster|slots"
)

// operator creates a Redis user with the ACL, on every node of b, deleted
// when the test ends, and returns a -redis URL with its credentials.
func operator(t *testing.T, b redistest.Backend, user, rules string) string {
	t.Helper()
	ctx := context.Background()
	pass := user + "-password-0123456789"
	args := []any{"ACL", "SETUSER", user, "reset", "on", ">" + pass, "resetkeys", "~{tokencache:*", "resetchannels", "&tokencache:*", "-@all"}
	for _, r := range strings.Fields(rules) {
		args = append(args, r)
	}
	admin := b.Client(t)
	each := func(fn func(c *redis.Client) error) error { return fn(admin.(*redis.Client)) }
	if cc, ok := admin.(*redis.ClusterClient); ok {
		each = func(fn func(c *redis.Client) error) error {
			return cc.ForEachShard(ctx, func(_ context.Context, c *redis.Client) error { return fn(c) })
		}
	}
	if err := each(func(c *redis.Client) error { return c.Do(ctx, args...).Err() }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = each(func(c *redis.Client) error { return c.Do(context.Background(), "ACL", "DELUSER", user).Err() })
	})
	addr := b.Addr
	if b.IsCluster() {
		addr = b.Cluster[0]
	}
	return (&url.URL{Scheme: "redis", User: url.UserPassword(user, pass), Host: addr}).String()
}

// TestOperatorACL runs every command as a user with only the documented
// operator ACL, on a real Redis and Cluster: nothing is refused. A user
// without the invalidate rules is refused invalidate, and one without
// +scan is refused list, each with exit code 2.
func TestOperatorACL(t *testing.T) {
	var real []redistest.Backend
	for _, b := range redistest.Backends(t) {
		if b.Mini == nil && len(b.Sentinels) == 0 {
			real = append(real, b)
		}
	}
	if len(real) == 0 {
		t.Skipf("needs a real Redis: set %s or %s", redistest.Env, redistest.ClusterEnv)
	}
	for _, b := range real {
		t.Run(b.Name, func(t *testing.T) { operatorACL(t, b) })
	}
}

func operatorACL(t *testing.T, b redistest.Backend) {
	ctx := context.Background()
	d := &deployment{prefix: "tokencache:" + strings.TrimPrefix(redistest.Prefix(t), "tct:"), rdb: b.Client(t)}
	cache, err := rediscache.New(d.rdb, rediscache.Options{Prefix: d.prefix, Source: token.Options{Logger: quiet}})
	if err != nil {
		t.Fatal(err)
	}
	d.cache = cache
	cred, _ := cache.Credential("acct")
	v, _ := cred.NextVersion(ctx)
	if err := cred.Save(ctx, token.Shared{Value: "ACL-TEST-TOKEN-SECRET-0123", Version: v, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
		t.Fatal(err)
	}
	extra := ""
	if b.IsCluster() {
		extra = " " + clusterACL
	}
	suffix := strings.NewReplacer("/", "-", ":", "-").Replace(t.Name()) + fmt.Sprint(os.Getpid())
	full := operator(t, b, "op-full-"+suffix, readACL+" "+invalidateACL+extra)
	readOnly := operator(t, b, "op-read-"+suffix, readACL+extra)
	noScan := operator(t, b, "op-noscan-"+suffix, strings.Replace(readACL, "+scan ", "", 1)+extra)
	flags := func(u string) []string {
		if b.IsCluster() {
			return []string{"-redis", u, "-cluster", strings.Join(b.Cluster, ","), "-prefix", d.prefix}
		}
		return []string{"-redis", u, "-prefix", d.prefix}
	}
	for _, u := range []string{full, readOnly} {
		if r := runCmd(t, append(flags(u), "list")...); r.code != exitOK || r.stdout != "acct\n" {
			t.Errorf("list as an operator: %v", r)
		}
		if r := runCmd(t, append(flags(u), "status", "acct")...); r.code != exitOK || strings.Contains(r.stdout+r.stderr, "NOPERM") {
			t.Errorf("status as an operator: %v", r)
		}
	}
	w := startWatch(t, append(flags(readOnly), "watch")...)
	if r := runCmd(t, append(flags(readOnly), "invalidate", "acct", "-version", fmt.Sprint(v))...); r.code != exitError || !strings.Contains(r.stderr, "NOPERM") {
		t.Errorf("invalidate without the invalidate rules: %v", r)
	}
	if r := runCmd(t, append(flags(full), "invalidate", "acct", "-version", fmt.Sprint(v))...); r.code != exitOK {
		t.Errorf("invalidate as an operator: %v", r)
	}
	if l := w.next(t); !strings.HasSuffix(l, fmt.Sprintf("invalidate  acct  version %d", v)) {
		t.Errorf("watch as an operator: %q", l)
	}
	if r := runCmd(t, append(flags(noScan), "list")...); r.code != exitError || !strings.Contains(r.stderr, "NOPERM") {
		t.Errorf("list without +scan: %v", r)
	}
	bad := strings.Replace(full, "-password-", "-wrong-", 1)
	if r := runCmd(t, append(flags(bad), "list")...); r.code != exitError || !strings.Contains(r.stderr, "refused the connection") || strings.Contains(r.stderr, "wrong-0123") {
		t.Errorf("list with a wrong password: %v", r)
	}
}

// TestOperatorACLIsMinimal: without any one of the documented rules, some
// command is refused, and says so (exit code 2 and NOPERM), except +hello
// (go-redis then authenticates with AUTH) and +eval (needed only when the
// server does not have the script yet, after a restart or SCRIPT FLUSH).
func TestOperatorACLIsMinimal(t *testing.T) {
	b := redistest.Backend{Name: "redis", Addr: redistest.Real(t)}
	rules := strings.Fields(readACL + " " + invalidateACL)
	for i, drop := range rules {
		if drop == "+hello" || drop == "+eval" {
			continue
		}
		t.Run(drop, func(t *testing.T) {
			ctx := context.Background()
			p := "tokencache:" + strings.TrimPrefix(redistest.Prefix(t), "tct:")
			cache, _ := rediscache.New(b.Client(t), rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}})
			cred, _ := cache.Credential("acct")
			v, _ := cred.NextVersion(ctx)
			if err := cred.Save(ctx, token.Shared{Value: "ACL-TEST-TOKEN-SECRET-0123", Version: v, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
				t.Fatal(err)
			}
			u := operator(t, b, fmt.Sprintf("op-min-%d-%d", i, os.Getpid()), strings.Join(slices.Delete(slices.Clone(rules), i, i+1), " "))
			refused := false
			for _, args := range [][]string{{"list"}, {"status", "acct"}, {"invalidate", "acct", "-version", fmt.Sprint(v)}} {
				r := runCmd(t, append([]string{"-redis", u, "-prefix", p}, args...)...)
				switch {
				case r.code == exitError && (strings.Contains(r.stderr, "NOPERM") || strings.Contains(r.stderr, "can't run this command")):
					refused = true
				case r.code != exitOK:
					t.Errorf("%q: %v", args, r)
				}
			}
			if drop == "+subscribe" {
				refused = subscribeRefused(t, u, p)
			}
			if !refused {
				t.Errorf("every command ran without %s", drop)
			}
		})
	}
}

// subscribeRefused reports whether watch fails to subscribe as the user.
func subscribeRefused(t *testing.T, u, prefix string) bool {
	r := runCmd(t, "-redis", u, "-prefix", prefix, "-timeout", "2s", "watch")
	return r.code == exitError && strings.Contains(r.stderr, "NOPERM")
}
