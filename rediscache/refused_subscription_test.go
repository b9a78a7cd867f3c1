package rediscache_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// warnLogsMentioning counts the WARN lines of a jsonLogger's output whose
// message contains substr (case-insensitive).
func warnLogsMentioning(out, substr string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		var ll struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal([]byte(l), &ll) == nil && ll.Level == "WARN" &&
			strings.Contains(strings.ToLower(ll.Msg), strings.ToLower(substr)) {
			n++
		}
	}
	return n
}

// TestRefusedSubscription: an instance whose Redis user may not SUBSCRIBE
// gets no notifications. It must say so (a WARN about the subscription) and
// must not keep serving a token another instance's Invalidate replaced: it
// re-reads on demand, at most once per PollInterval.
func TestRefusedSubscription(t *testing.T) {
	addr := realRedis(t)
	ctx := context.Background()
	restricted, p := aclUser(t, addr, "tokencache-nosub-test", "+subscribe")

	// The premise: the server refuses this user's SUBSCRIBE.
	{
		ps := restricted.Subscribe(ctx, p+"events")
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := ps.Receive(rctx)
		cancel()
		_ = ps.Close()
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Fatalf("SUBSCRIBE as the restricted user: %v, want NOPERM", err)
		}
	}

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
		t.Fatalf("A.Token: %v", err)
	}
	if tok, err := b.Token(ctx); err != nil || tok.Value != t1.Value {
		t.Fatalf("B.Token = %v, %v; want the shared %v", tok, err, t1)
	}
	if err := b.Invalidate(ctx, t1.Value); err != nil {
		t.Fatalf("B.Invalidate: %v", err)
	}
	t2, err := b.Token(ctx)
	if err != nil || t2.Value == t1.Value {
		t.Fatalf("B.Token after Invalidate = %v, %v; want a new token", t2, err)
	}

	// A must serve T2 within 2s (PollInterval is 20ms), and have warned
	// about its subscription by then.
	start := time.Now()
	deadline := time.NewTimer(2 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var got string
	var gotErr error
	for got != t2.Value || warnLogsMentioning(logsA.String(), "subscri") == 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("after 2s: A.Token = %q, %v (T1 %q, T2 %q; T1 valid upstream: %v); A's subscription warnings: %d; A's log:\n%s",
				got, gotErr, t1.Value, t2.Value, up.Valid(t1.Value), warnLogsMentioning(logsA.String(), "subscri"), logsA.String())
		}
		tok, err := a.Token(ctx)
		got, gotErr = tok.Value, err
	}
	t.Logf("A served T2 and warned %v after B's refresh", time.Since(start).Round(time.Millisecond))
	if n := up.Issued(); n != 2 {
		t.Errorf("upstream issued %d tokens, want 2", n)
	}
}
