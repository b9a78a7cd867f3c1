package rediscache_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokencache/tokencache/rediscache"
)

// TestReviewMalformedNotificationFlood: anyone who can PUBLISH on the
// channel writes one WARN line per garbage message (the "unconfirmed event"
// warning is limited to one a minute; this one is not).
func TestReviewMalformedNotificationFlood(t *testing.T) {
	addr := realRedis(t)
	ctx := context.Background()
	rdb := newClient(t, addr)
	p := prefix(t)
	var logs syncBuffer
	o := testOptions(p)
	o.Source.Logger = jsonLogger(&logs)
	s, err := rediscache.New(newClient(t, addr), o).Source("c", newUpstream(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	waitSubs(t, rdb, 1, p+"events")
	const n = 5000
	pipe := rdb.Pipeline()
	for range n {
		pipe.Publish(ctx, p+"events", "garbage")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	warns := countLogs(logs.String(), "WARN", "malformed notification")
	t.Logf("%d garbage messages -> %d WARN lines", n, warns)
	if warns > 10 {
		t.Errorf("%d WARN lines for %d garbage messages: unbounded log flood", warns, n)
	}
}
