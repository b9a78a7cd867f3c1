package rediscache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// TestOneSubscriptionForManyCredentials: 2,000 credentials in one Store share
// one pub/sub subscription and a handful of connections, and each hears only
// its own events.
func TestOneSubscriptionForManyCredentials(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		store := newCache(t, rdb, rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}})
		const n = 2000
		got := make([]chan token.Event, n)
		creds := make([]*rediscache.Credential, n)
		for i := range n {
			c, err := store.Credential(fmt.Sprintf("cred-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			creds[i] = c
			ch := make(chan token.Event, 4)
			got[i] = ch
			stop := c.Watch(func(ev token.Event) {
				if ev.Kind != token.Resync {
					ch <- ev
				}
			})
			defer stop()
		}
		other := b.Client(t)
		var subs int64
		if !scenario.Retry(5*time.Second, time.Millisecond, func() bool { // polling server state
			var err error
			if subs, err = numSub(ctx, other, p+"events"); err != nil {
				t.Fatal(err)
			}
			return subs != 0
		}) || subs != 1 {
			t.Fatalf("%d subscriptions for %d credentials, want 1", subs, n)
		}
		if conns := rdb.PoolStats().TotalConns; conns > 3*uint32(max(1, len(b.Cluster))) {
			t.Errorf("%d connections for %d credentials", conns, n)
		}
		// An event for credential 7 reaches its watcher and no other.
		v, _ := creds[7].NextVersion(ctx)
		if err := creds[7].Save(ctx, token.Shared{Value: "token-for-seven-0123", Version: v, TTL: time.Minute, Lifetime: time.Minute}); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-got[7]:
			if ev.Kind != token.Refreshed || ev.Version != v {
				t.Errorf("event %+v, want Refreshed %d", ev, v)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no event for credential 7")
		}
		for i, ch := range got {
			if len(ch) > 0 {
				t.Errorf("credential %d heard another's event", i)
			}
		}
	})
}

// TestResubscribeAnnouncesResync kills the subscription's connection on a real
// Redis (miniredis has no CLIENT KILL); go-redis reconnects, and since
// messages may have been lost meanwhile, every watcher is told to re-read.
func TestResubscribeAnnouncesResync(t *testing.T) {
	addr := realRedis(t)
	ctx := context.Background()
	rdb := newClient(t, addr)
	store := newCache(t, rdb, rediscache.Options{Prefix: prefix(t), Source: token.Options{Logger: quiet}})
	c, _ := store.Credential("c")
	resync := make(chan struct{}, 8)
	stop := c.Watch(func(ev token.Event) {
		if ev.Kind == token.Resync {
			resync <- struct{}{}
		}
	})
	defer stop()
	admin := newClient(t, addr)
	// The first subscription's confirmation is a Resync too.
	select {
	case <-resync:
	case <-time.After(10 * time.Second):
		t.Fatal("the subscription was never confirmed")
	}
	if killed, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil || killed == 0 {
		t.Fatalf("CLIENT KILL TYPE pubsub: %d, %v; want the confirmed subscription killed", killed, err)
	}
	select {
	case <-resync:
	case <-time.After(10 * time.Second):
		t.Fatal("no Resync after the subscription was re-established")
	}
}
