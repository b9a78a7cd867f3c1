package rediscache_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// TestPushesKeepTheNewest: 1,000 pushes of one credential, in shuffled issuer
// order, offered by 8 instances (each with its own client and Cache) from 4
// goroutines each. The store keeps the newest; every instance serves it
// within the notification window; nothing calls the upstream; a forged push
// far ahead is refused when the provider states MaxLead.
func TestPushesKeepTheNewest(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		p := redistest.Prefix(t)
		var asked atomic.Int64
		f := token.AwaitPush(func(context.Context) error { asked.Add(1); return nil })
		var srcs []*token.Source
		for range 8 {
			c, err := rediscache.New(b.Client(t), rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}})
			if err != nil {
				t.Fatal(err)
			}
			s, err := c.Source("ticket", f)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			srcs = append(srcs, s)
		}
		ctx := context.Background()
		const n = 1000
		orders := rand.Perm(n)
		work := make(chan int)
		var wg sync.WaitGroup
		for i := range len(srcs) * 4 {
			wg.Go(func() {
				for o := range work {
					push := token.Push{Value: fmt.Sprintf("ticket-%06d-0123456789", o), Order: int64(1_700_000_000 + o), Lifetime: time.Hour, MaxLead: 86400}
					if _, err := srcs[i%len(srcs)].Offer(ctx, push); err != nil {
						t.Error(err)
					}
				}
			})
		}
		for _, o := range orders {
			work <- o
		}
		close(work)
		wg.Wait()
		offered := time.Now()
		want := fmt.Sprintf("ticket-%06d-0123456789", n-1)
		c, err := rediscache.New(b.Client(t), rediscache.Options{Prefix: p})
		if err != nil {
			t.Fatal(err)
		}
		cred, _ := c.Credential("ticket")
		if sh, err := cred.Load(ctx); err != nil || sh.Value != want {
			t.Fatalf("stored %q, %v; want %q", sh.Value, err, want)
		}
		var slowest time.Duration
		for i, s := range srcs {
			for {
				tok, err := s.Token(ctx)
				if err == nil && tok.Value == want {
					break
				}
				if time.Since(offered) > 2*time.Second {
					t.Fatalf("instance %d serves %v, %v two seconds after the last push", i, tok, err)
				}
				time.Sleep(time.Millisecond) // polling what the instance serves
			}
			slowest = max(slowest, time.Since(offered))
		}
		forged := token.Push{Value: "forged-ticket-0123456789", Order: token.MaxPushOrder, Lifetime: time.Hour, MaxLead: 86400}
		if ok, err := srcs[0].Offer(ctx, forged); ok || !errors.Is(err, token.ErrPushTooFarAhead) {
			t.Errorf("forged push: %v, %v; want ErrPushTooFarAhead", ok, err)
		}
		if sh, _ := cred.Load(ctx); sh.Value != want {
			t.Errorf("after the forged push the store holds %q", sh.Value)
		}
		if asked.Load() != 0 {
			t.Errorf("the upstream was asked %d times, want 0", asked.Load())
		}
		t.Logf("%d pushes from 8 instances × 4 goroutines: newest stored, every instance served it %v after the last push, 0 upstream calls",
			n, slowest.Round(time.Millisecond))
	})
}
