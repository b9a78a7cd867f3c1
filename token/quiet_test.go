package token_test

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestQuietServiceNeverWaits: one Token call every 1.2 lifetimes for 20
// lifetimes, default Options. A credential used within its last lifetime is
// refreshed ahead of expiry without a caller, so no call after the first
// waits for a fetch. Before, every call found the token expired and waited
// for the upstream (100 ms).
func TestQuietServiceNeverWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime = 2 * time.Second
		up := tokentest.New(lifetime)
		up.Latency = 100 * time.Millisecond
		st := tokentest.NewStore()
		s, err := token.NewSource("c", up, st, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx := context.Background()
		waited := 0
		for i := range 17 { // 17 calls, 1.2 lifetimes apart: 20 lifetimes
			start := time.Now()
			tok, err := s.Token(ctx)
			if err != nil || !up.Valid(tok.Value) {
				t.Fatalf("call %d: %v, valid %v", i, err, up.Valid(tok.Value))
			}
			if d := time.Since(start); d > 0 && i > 0 {
				waited++
				t.Errorf("call %d waited %v", i, d)
			}
			time.Sleep(lifetime * 12 / 10) // virtual time: the service is quiet
		}
		t.Logf("1 call every 1.2 lifetimes, 17 calls: %d waited after the first; %d upstream fetches", waited, up.Calls())
	})
}

// TestIdleCredentialsFetchNothing: 1,000 credentials, each used once, then
// idle for 3 lifetimes, default Options. The refresh ahead that follows the
// last use (it was within the lifetime) fetches once per credential; after
// that idle lifetime, nothing is fetched. The lifetime, 10 s, makes the
// default refresh-ahead window 20% of it, as for any token of 5 s or more.
func TestIdleCredentialsFetchNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime = 10 * time.Second
		const n = 1000
		up := tokentest.New(lifetime)
		ctx := context.Background()
		var srcs []*token.Source
		for i := range n {
			st := tokentest.NewStore()
			s, err := token.NewSource(fmt.Sprint("c", i), up, st, st, token.Options{Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Token(ctx); err != nil {
				t.Fatal(err)
			}
			srcs = append(srcs, s)
		}
		first := up.Calls()
		time.Sleep(lifetime + lifetime/5) // the last use leaves the window
		synctest.Wait()
		afterOne := up.Calls()
		time.Sleep(2 * lifetime)
		synctest.Wait()
		idle := up.Calls() - afterOne
		t.Logf("%d credentials: %d fetches on first use, %d in the lifetime after it, %d in the next 2 idle lifetimes",
			n, first, afterOne-first, idle)
		if afterOne-first > n {
			t.Errorf("%d fetches in the lifetime after the last use, want at most one per credential", afterOne-first)
		}
		if idle != 0 {
			t.Errorf("%d fetches while idle for 2 lifetimes, want 0", idle)
		}
	})
}
