package rediscache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
)

// TestRefusedResubscription: the subscription is confirmed, then the
// connection drops and the server refuses the new SUBSCRIBE (the ACL changed,
// or a failover reached a server with another ACL). The Store must notice,
// warn, and have its Sources re-read on demand, as for a first refusal.
func TestRefusedResubscription(t *testing.T) {
	addr := realRedis(t)
	ctx := context.Background()
	admin := newClient(t, addr)
	user := "tokencache-resub-test"
	restricted, p := aclUser(t, addr, user)
	up := newUpstream(time.Hour)
	var logsA syncBuffer
	oA := testOptions(p)
	oA.Source.Logger = jsonLogger(&logsA)
	a, err := newCache(t, restricted, oA).Source("c", up)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := newCache(t, newClient(t, addr), testOptions(p)).Source("c", up)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t1, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Token(ctx); err != nil {
		t.Fatal(err)
	}
	waitSubs(t, admin, 2, p+"events")
	admin.Do(ctx, "ACL", "SETUSER", user, "-subscribe")
	admin.Do(ctx, "CLIENT", "KILL", "USER", user, "SKIPME", "yes")
	if err := b.Invalidate(ctx, t1.Value); err != nil {
		t.Fatal(err)
	}
	t2, err := b.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got string
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end) && got != t2.Value; {
		tok, _ := a.Token(ctx)
		got = tok.Value
		time.Sleep(5 * time.Millisecond) // a caller's pace
	}
	if got != t2.Value {
		t.Errorf("A still serves the invalidated token 3 s after the refusal")
	}
	if n := warnLogsMentioning(logsA.String(), "subscri"); n == 0 {
		t.Errorf("no warning about the refused subscription; logs:\n%s", logsA.String())
	}
	if n := up.Issued(); n != 2 {
		t.Errorf("upstream issued %d, want 2", n)
	}
}

// TestMalformedNotificationsAreRateLimited: garbage on the channel is
// ignored with one warning a minute, not one per message.
func TestMalformedNotificationsAreRateLimited(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		var logs syncBuffer
		o := testOptions(p)
		o.Source.Logger = jsonLogger(&logs)
		s, err := newCache(t, b.Client(t), o).Source("c", newUpstream(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Token(ctx); err != nil {
			t.Fatal(err)
		}
		waitSubs(t, rdb, 1, p+"events")
		for range 200 {
			if err := rdb.Publish(ctx, p+"events", "garbage").Err(); err != nil {
				t.Fatal(err)
			}
		}
		// A valid event after the garbage: once it is handled, so is the garbage.
		if err := rdb.Publish(ctx, p+"events", "r 4611686018427387904 c").Err(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for countLogs(logs.String(), "WARN", "does not confirm") == 0 && time.Now().Before(deadline) {
			_, _ = s.Token(ctx)
			time.Sleep(time.Millisecond) // the event is handled in the background
		}
		if n := countLogs(logs.String(), "WARN", "malformed notification"); n != 1 {
			t.Errorf("%d warnings for 200 malformed notifications, want 1", n)
		}
	})
}

// TestRoutedSentinelClientSharesTheChannel: a Sentinel client that routes
// reads to replicas (a *redis.ClusterClient underneath, which selects its DB
// on connect) uses the same channel as a plain Sentinel client on that DB:
// the DB comes from the server when the options do not say it.
func TestRoutedSentinelClientSharesTheChannel(t *testing.T) {
	sb, ok := redistest.SentinelBackend()
	if !ok {
		t.Skip("needs the Sentinel topology: set " + redistest.SentinelEnv)
	}
	ctx := context.Background()
	p := prefix(t)
	routed := redis.NewUniversalClient(&redis.UniversalOptions{MasterName: sb.Master, Addrs: sb.Sentinels, DB: 1, RouteRandomly: true})
	defer routed.Close()
	plain := redis.NewUniversalClient(&redis.UniversalOptions{MasterName: sb.Master, Addrs: sb.Sentinels, DB: 1})
	defer plain.Close()
	up := newUpstream(time.Hour)
	a, err := newCache(t, routed, testOptions(p)).Source("c", up)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := newCache(t, plain, testOptions(p)).Source("c", up)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t1, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok, err := b.Token(ctx); err != nil || tok.Value != t1.Value {
		t.Fatalf("not shared: %v, %v", tok, err)
	}
	// A routed client may subscribe on a replica (PUBLISH reaches replicas
	// through replication): count on every node.
	waitSubsOnNodes(t, sb, 2, p+"events:db1")
	if err := b.Invalidate(ctx, t1.Value); err != nil {
		t.Fatal(err)
	}
	t2, err := b.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		got, err := a.Token(ctx)
		if err == nil && got.Value == t2.Value {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the routed client's Source still serves the replaced token: %v, %v", got, err)
		}
		time.Sleep(time.Millisecond) // the notification arrives in the background
	}
}

// TestRingIsRefused: a Ring shards channels apart from keys, so events would
// never arrive; New says so instead of failing silently.
func TestRingIsRefused(t *testing.T) {
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	if _, err := rediscache.New(ring, testOptions(prefix(t))); err == nil || !strings.Contains(err.Error(), "Ring") {
		t.Errorf("Source on a Ring: %v, want an error naming Ring", err)
	}
}

// waitSubsOnNodes waits until channel has n subscribers on the primary and
// replicas of a Sentinel topology together.
func waitSubsOnNodes(t *testing.T, sb redistest.Backend, n int64, channel string) {
	t.Helper()
	ctx := context.Background()
	sc := redis.NewSentinelClient(&redis.Options{Addr: sb.Sentinels[0]})
	defer sc.Close()
	primary, err := sc.GetMasterAddrByName(ctx, sb.Master).Result()
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{primary[0] + ":" + primary[1]}
	replicas, err := sc.Replicas(ctx, sb.Master).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range replicas {
		addrs = append(addrs, r["ip"]+":"+r["port"])
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var subs int64
		for _, a := range addrs {
			c := redis.NewClient(&redis.Options{Addr: a})
			m, _ := c.PubSubNumSub(ctx, channel).Result()
			_ = c.Close()
			subs += m[channel]
		}
		if subs >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers of %s on %v, want %d", subs, channel, addrs, n)
		}
		time.Sleep(10 * time.Millisecond) // polling server state
	}
}
