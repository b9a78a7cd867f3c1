package rediscache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// minimalACL is the ACL rule the README documents: only tokencache's keys
// (prefix "tokencache:"), its channel, and the commands it sends, directly
// or from its scripts.
const minimalACL = "on >%s resetkeys ~{tokencache:* resetchannels &tokencache:* -@all " +
	"+hello +ping +evalsha +eval +subscribe " +
	"+type +get +set +del +pttl +pexpire +getrange +hget +hmget +hset +hdel +hexists +hincrby +time +publish"

// aclUser creates a Redis user on addr with the minimal ACL, less the rules
// in drop (e.g. "+subscribe"), deleted when the test ends. It returns the
// user's client and a key prefix inside the ACL's key pattern.
func aclUser(t *testing.T, addr, user string, drop ...string) (*redis.Client, string) {
	t.Helper()
	ctx := context.Background()
	admin := newClient(t, addr)
	pass := user + "-password-0123456789"
	acl := strings.Replace(minimalACL, "%s", pass, 1)
	for _, d := range drop {
		acl = strings.Replace(acl, " "+d, "", 1)
	}
	args := []any{"ACL", "SETUSER", user, "reset"}
	for _, f := range strings.Fields(acl) {
		args = append(args, f)
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Do(context.Background(), "ACL", "DELUSER", user) })
	c := redis.NewClient(&redis.Options{Addr: addr, Username: user, Password: pass})
	t.Cleanup(func() { _ = c.Close() })
	return c, "tokencache:" + strings.TrimPrefix(prefix(t), "tct:")
}

// TestMinimalACL runs the whole protocol as a Redis user that has only the
// permissions the README lists.
func TestMinimalACL(t *testing.T) {
	addr := realRedis(t)
	ctx := context.Background()
	admin := newClient(t, addr)
	user, pass := "tokencache-acl-test", "acl-test-password-0123456789"
	args := []any{"ACL", "SETUSER", user, "reset"}
	for _, f := range strings.Fields(strings.Replace(minimalACL, "%s", pass, 1)) {
		args = append(args, f)
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatal(err)
	}
	defer admin.Do(ctx, "ACL", "DELUSER", user)
	p := "tokencache:" + strings.TrimPrefix(prefix(t), "tct:") // inside the ACL's key pattern
	newUser := func() *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: addr, Username: user, Password: pass})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	o := testOptions(p)
	var logs syncBuffer
	o.Source.Logger = jsonLogger(&logs)
	up := newUpstream(time.Hour)
	var srcs []*token.Source
	for range 3 {
		s := source(t, newUser(), o, up)
		srcs = append(srcs, s)
	}
	// Fetch, share, invalidate, refresh, back off, lock: all as the user.
	first, err := srcs[0].Token(ctx)
	if err != nil {
		t.Fatalf("Token as the ACL user: %v", err)
	}
	for _, s := range srcs {
		if tok, err := s.Token(ctx); err != nil || tok.Value != first.Value {
			t.Fatalf("Token = %v, %v", tok, err)
		}
	}
	if err := srcs[1].Invalidate(ctx, first.Value); err != nil {
		t.Fatalf("Invalidate as the ACL user: %v", err)
	}
	if tok, err := srcs[1].Token(ctx); err != nil || tok.Value == first.Value {
		t.Fatalf("Token after Invalidate = %v, %v", tok, err)
	}
	st := newCache(t, newUser(), o)
	c, _ := st.Credential("c")
	if err := c.SaveBackoff(ctx, token.SharedBackoff{Failures: 1, Remaining: time.Millisecond, Class: token.ClassTemporary}); err != nil {
		t.Fatalf("SaveBackoff: %v", err)
	}
	if _, err := c.LoadBackoff(ctx); err != nil {
		t.Fatalf("LoadBackoff: %v", err)
	}
	lim, _ := st.Limiter("c", "force_refresh", rediscache.Limit{PerDay: 1})
	if _, err := lim.Allow(ctx); err != nil {
		t.Fatalf("Limiter: %v", err)
	}
	l, err := lock.New(newUser()).TryObtain(ctx, "{"+p+"c}:other-lock", time.Second)
	if err != nil {
		t.Fatalf("lock: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	if strings.Contains(logs.String(), "NOPERM") || strings.Contains(logs.String(), "can't") {
		t.Errorf("a command was refused: %s", logs.String())
	}
	// And nothing else: another prefix is off limits.
	if err := newUser().Get(ctx, "other:key").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("GET outside the key pattern: %v, want NOPERM", err)
	}
}

// TestMinimalACLRefreshState runs rotating refresh state (seed, redeem and
// save in one script, commit, delete) and a push as a user with only the
// README's permissions.
func TestMinimalACLRefreshState(t *testing.T) {
	addr := realRedis(t)
	ctx := context.Background()
	c, p := aclUser(t, addr, "tokencache-acl-refresh")
	var logs syncBuffer
	o := testOptions(p)
	o.Source.Logger = jsonLogger(&logs)
	up := tokentest.NewRotating(time.Hour)
	src, err := newCache(t, c, o).Source("r", up)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.SeedRefresh(ctx, up.Authorize()); err != nil {
		t.Fatalf("SeedRefresh as the ACL user: %v", err)
	}
	if tok, err := src.Token(ctx); err != nil || !up.Valid(tok.Value) {
		t.Fatalf("Token (redeem, save with the state) as the ACL user: %v", err)
	}
	cr, _ := newCache(t, c, o).Credential("r")
	st, err := cr.LoadRefresh(ctx)
	if err != nil || st.Generation != 2 {
		t.Fatalf("LoadRefresh: generation %d, %v; want 2", st.Generation, err)
	}
	if err := cr.CommitRefresh(ctx, st.Generation, "rt-next"); err != nil {
		t.Fatalf("CommitRefresh as the ACL user: %v", err)
	}
	if err := src.DeleteRefresh(ctx); err != nil {
		t.Fatalf("DeleteRefresh as the ACL user: %v", err)
	}
	pushed, err := newCache(t, c, o).Source("pushed", token.AwaitPush(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer pushed.Close()
	if _, err := pushed.Offer(ctx, token.Push{Value: "ticket-0123456789", Order: 1, Lifetime: time.Hour}); err != nil {
		t.Fatalf("Offer as the ACL user: %v", err)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		// CONFIG GET, for the durability check, is optional (README).
		if strings.Contains(line, "NOPERM") && !strings.Contains(line, "config|get") {
			t.Errorf("a command was refused: %s", line)
		}
	}
}
