package rediscache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
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
	a, b, logsA := restrictedPair(t, addr, restricted, p, up)
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
	// A caller every 5ms: an unsubscribed Source re-reads on demand.
	if !scenario.Retry(3*time.Second, 5*time.Millisecond, func() bool {
		tok, _ := a.Token(ctx)
		return tok.Value == t2.Value
	}) {
		t.Errorf("A still serves the invalidated token 3 s after the refusal")
	}
	if n := logsA.Count("WARN", "subscri"); n == 0 {
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
		s := source(t, b.Client(t), o, newUpstream(time.Hour))
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
		if !scenario.Retry(5*time.Second, time.Millisecond, func() bool {
			_, _ = s.Token(ctx)
			return logs.Count("WARN", "does not confirm") > 0
		}) {
			t.Fatalf("the valid event after the garbage was not handled; logs:\n%s", logs.String())
		}
		if n := logs.Count("WARN", "malformed notification"); n != 1 {
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
	t.Cleanup(func() { _ = routed.Close() })
	plain := redis.NewUniversalClient(&redis.UniversalOptions{MasterName: sb.Master, Addrs: sb.Sentinels, DB: 1})
	t.Cleanup(func() { _ = plain.Close() })
	up := newUpstream(time.Hour)
	a := source(t, routed, testOptions(p), up)
	b := source(t, plain, testOptions(p), up)
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
	var got token.Token
	if !scenario.Retry(2*time.Second, time.Millisecond, func() bool {
		got, err = a.Token(ctx)
		return err == nil && got.Value == t2.Value
	}) {
		t.Fatalf("the routed client's Source still serves the replaced token: %v, %v", got, err)
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
	var subs int64
	if !scenario.Retry(5*time.Second, 10*time.Millisecond, func() bool { // polling server state
		subs = 0
		for _, a := range addrs {
			c := redis.NewClient(&redis.Options{Addr: a})
			m, _ := c.PubSubNumSub(ctx, channel).Result()
			_ = c.Close()
			subs += m[channel]
		}
		return subs >= n
	}) {
		t.Fatalf("%d subscribers of %s on %v, want %d", subs, channel, addrs, n)
	}
}
