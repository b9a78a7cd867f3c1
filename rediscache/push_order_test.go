package rediscache_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// TestLateMicrosecondPushIsRefused: Push.Order accepts 1 to
// MaxPushOrder (2^53-1, 16 digits), e.g. an issuer timestamp in
// microseconds (1.7e15). offerScript reads the stored order with plainint,
// which accepts at most 15 digits: a stored 16-digit order is "not ours" and
// ignored, so a late push replaces the newer one.
func TestLateMicrosecondPushIsRefused(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		c, err := rediscache.New(b.Client(t), rediscache.Options{Prefix: redistest.Prefix(t), Source: token.Options{Logger: quiet}})
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.Source("ticket", token.AwaitPush(nil))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx := context.Background()
		const us = int64(1_700_000_000_000_000) // an issuer timestamp in µs
		newer := token.Push{Value: "ticket-newer-0123456789", Order: us + 2, Lifetime: time.Hour}
		older := token.Push{Value: "ticket-older-0123456789", Order: us + 1, Lifetime: time.Hour}
		if ok, err := s.Offer(ctx, newer); !ok || err != nil {
			t.Fatalf("newer push: %v, %v", ok, err)
		}
		if ok, err := s.Offer(ctx, older); ok || err != nil {
			t.Errorf("late push (order %d after %d): stored %v, %v; want refused", older.Order, newer.Order, ok, err)
		}
		cred, _ := c.Credential("ticket")
		if sh, err := cred.Load(ctx); err != nil || sh.Value != newer.Value {
			t.Errorf("store holds %q, %v; want %q", sh.Value, err, newer.Value)
		}
		// The forged-order bound too: MaxLead is skipped when the stored
		// order is not read.
		forged := token.Push{Value: "ticket-forged-0123456789", Order: token.MaxPushOrder, Lifetime: time.Hour, MaxLead: 1_000_000}
		if ok, err := s.Offer(ctx, forged); ok {
			t.Errorf("forged push %d with MaxLead %d after %d: stored, %v; want ErrPushTooFarAhead", forged.Order, forged.MaxLead, newer.Order, err)
		}
	})
}
