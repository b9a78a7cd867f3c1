package token_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// pushed returns n Sources of one pushed credential on st, whose request
// hook counts its calls in asked.
func pushed(t *testing.T, st *tokentest.Store, n int, asked *atomic.Int64) []*token.Source {
	t.Helper()
	var srcs []*token.Source
	for range n {
		f := token.AwaitPush(func(context.Context) error { asked.Add(1); return nil })
		s, err := token.NewSource("ticket", f, st, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		srcs = append(srcs, s)
	}
	return srcs
}

// TestOfferKeepsTheNewest: pushes offered out of order, by several
// instances at once, leave the one with the greatest issuer order stored and
// served everywhere; a late push never replaces it.
func TestOfferKeepsTheNewest(t *testing.T) {
	st := tokentest.NewStore()
	var asked atomic.Int64
	srcs := pushed(t, st, 8, &asked)
	ctx := context.Background()
	orders := rand.Perm(1000)
	var wg sync.WaitGroup
	var stored atomic.Int64
	for i, o := range orders {
		wg.Go(func() {
			ok, err := srcs[i%len(srcs)].Offer(ctx, token.Push{Value: fmt.Sprintf("ticket-%06d-0123456789", o+1), Order: int64(o + 1), Lifetime: time.Hour})
			if err != nil {
				t.Error(err)
			}
			if ok {
				stored.Add(1)
			}
		})
	}
	wg.Wait()
	want := "ticket-001000-0123456789"
	if sh, err := st.Load(ctx); err != nil || sh.Value != want {
		t.Fatalf("stored %q, %v; want %q", sh.Value, err, want)
	}
	for i, s := range srcs {
		if tok, err := s.Token(ctx); err != nil || tok.Value != want {
			t.Errorf("instance %d serves %v, %v; want the newest", i, tok, err)
		}
	}
	if ok, err := srcs[0].Offer(ctx, token.Push{Value: "late-ticket-0123456789", Order: 999, Lifetime: time.Hour}); ok || err != nil {
		t.Errorf("late push: stored %v, %v; want refused without error", ok, err)
	}
	if asked.Load() != 0 {
		t.Errorf("the upstream was asked to push %d times, want 0", asked.Load())
	}
	t.Logf("1000 pushes in shuffled order from 8 instances: %d stored on the way, the newest kept, 0 upstream calls", stored.Load())
}

// TestForgedPushIsBounded: a push with a far-future order is refused when
// the provider states MaxLead; without it, it holds off genuine pushes only
// until its own lifetime ends.
func TestForgedPushIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := tokentest.NewStore()
		var asked atomic.Int64
		s := pushed(t, st, 1, &asked)[0]
		ctx := context.Background()
		if _, err := s.Offer(ctx, token.Push{Value: "genuine-ticket-000001", Order: 1000, Lifetime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		forged := token.Push{Value: "forged-ticket-0000001", Order: token.MaxPushOrder, Lifetime: time.Hour, MaxLead: 3600}
		if ok, err := s.Offer(ctx, forged); ok || !errors.Is(err, token.ErrPushTooFarAhead) {
			t.Fatalf("forged push with MaxLead: %v, %v; want ErrPushTooFarAhead", ok, err)
		}
		forged.MaxLead = 0
		if ok, err := s.Offer(ctx, forged); !ok || err != nil {
			t.Fatalf("forged push without MaxLead: %v, %v; want stored", ok, err)
		}
		if ok, _ := s.Offer(ctx, token.Push{Value: "genuine-ticket-000002", Order: 1600, Lifetime: time.Hour}); ok {
			t.Fatal("a genuine push replaced the forged one while it lives")
		}
		time.Sleep(time.Hour) // the forged value's lifetime
		if ok, err := s.Offer(ctx, token.Push{Value: "genuine-ticket-000003", Order: 5200, Lifetime: time.Hour}); !ok || err != nil {
			t.Fatalf("genuine push after the forged one expired: %v, %v; want stored", ok, err)
		}
	})
}

// TestPushedCredentialWithoutPush: a pushed credential that nears expiry
// with no new push asks the upstream to push again once per backoff step
// for the whole cluster, keeps serving the value while it is valid, then
// returns ErrNotPushed on every instance; the next push ends it everywhere.
func TestPushedCredentialWithoutPush(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := tokentest.NewStore()
		var asked atomic.Int64
		srcs := pushed(t, st, 3, &asked)
		ctx := context.Background()
		const lifetime = 10 * time.Minute
		if _, err := srcs[0].Offer(ctx, token.Push{Value: "ticket-000000000001", Order: 1, Lifetime: lifetime}); err != nil {
			t.Fatal(err)
		}
		for _, s := range srcs {
			if _, err := s.Token(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// Into the refresh-ahead window: still served, the cluster asks.
		time.Sleep(lifetime - time.Minute)
		for range 60 {
			for _, s := range srcs {
				if tok, err := s.Token(ctx); err != nil || tok.Value != "ticket-000000000001" {
					t.Fatalf("in the window: %v, %v", tok, err)
				}
			}
			time.Sleep(time.Second)
		}
		// 1 s doubling, ±20%, over 60 s: about 6 asks, never one per caller.
		n := asked.Load()
		if n < 3 || n > 10 {
			t.Errorf("asked for a push %d times in the last minute, want about 6", n)
		}
		t.Logf("3 instances, 3 callers a second for the last minute of the value: the upstream was asked to push %d times", n)
		time.Sleep(time.Minute)
		for i, s := range srcs {
			if _, err := s.Token(ctx); !errors.Is(err, token.ErrNotPushed) {
				t.Errorf("instance %d after expiry: %v, want ErrNotPushed", i, err)
			}
		}
		if _, err := srcs[1].Offer(ctx, token.Push{Value: "ticket-000000000002", Order: 2, Lifetime: lifetime}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		for i, s := range srcs {
			if tok, err := s.Token(ctx); err != nil || tok.Value != "ticket-000000000002" {
				t.Errorf("instance %d after the push: %v, %v", i, tok, err)
			}
		}
	})
}
