package token_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// rotatingSources returns n Sources of one credential refreshed by up's
// rotating refresh tokens, sharing st (also the RefreshStore), seeded with a
// new authorization.
func rotatingSources(t *testing.T, up *tokentest.Rotating, st *tokentest.Store, n int, lock token.Locker) []*token.Source {
	t.Helper()
	var srcs []*token.Source
	for range n {
		s, err := token.NewSource("authorizer", up, st, lock, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		srcs = append(srcs, s)
	}
	if err := srcs[0].SeedRefresh(context.Background(), up.Authorize()); err != nil {
		t.Fatal(err)
	}
	return srcs
}

// TestRotatingRefreshRedeemedOnce: 8 instances × 16 goroutines over 20
// lifetimes redeem each refresh token once: no family revoked, the stored
// state is always the current one, and every token handed out is valid.
func TestRotatingRefreshRedeemedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lifetime = 10 * time.Second
		up := tokentest.NewRotating(lifetime)
		up.Latency = 50 * time.Millisecond
		st := tokentest.NewStore()
		srcs := rotatingSources(t, up, st, 8, st)
		ctx := context.Background()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var invalid, errs int
		for _, s := range srcs {
			for range 16 {
				wg.Go(func() {
					for start := time.Now(); time.Since(start) < 20*lifetime; time.Sleep(100 * time.Millisecond) {
						tok, err := s.Token(ctx)
						mu.Lock()
						switch {
						case err != nil:
							errs++
						case !up.Valid(tok.Value):
							invalid++
						}
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		// One redemption per refresh-ahead period (0.8 lifetimes), plus the
		// first.
		ideal := 1 + int(20*lifetime/(lifetime*8/10))
		t.Logf("8 instances × 16 goroutines, 20 lifetimes: %d redemptions (ideal %d), %d revocations, %d errors, %d invalid tokens",
			up.Redemptions(), ideal, up.Revocations(), errs, invalid)
		if up.Redemptions() > ideal+1 || up.Revocations() != 0 || errs != 0 || invalid != 0 {
			t.Errorf("want at most %d redemptions, 0 revocations, 0 errors, 0 invalid tokens", ideal+1)
		}
		if _, err := st.LoadRefresh(ctx); err != nil {
			t.Errorf("refresh state lost: %v", err)
		}
	})
}

// losingLocker hands out locks of st; the first one is lost when the test
// closes start, as when Redis stalls past the lock TTL mid-redemption.
type losingLocker struct {
	st    *tokentest.Store
	start chan struct{} // closed by the test to make the first lock lost
	n     atomic.Int32  // locks handed out
}

func (l *losingLocker) TryLock(ctx context.Context) (token.Held, error) {
	h, err := l.st.TryLock(ctx)
	if err != nil || l.n.Add(1) > 1 {
		return h, err
	}
	lctx, cancel := context.WithCancel(h.Context())
	go func() {
		select {
		case <-l.start:
			cancel()
			_ = h.Release(context.Background()) // another instance may take it now
		case <-lctx.Done():
		}
	}()
	return &lostHeld{Held: h, ctx: lctx, cancel: cancel}, nil
}

type lostHeld struct {
	token.Held
	ctx    context.Context
	cancel context.CancelFunc
}

func (h *lostHeld) Context() context.Context { return h.ctx }
func (h *lostHeld) Release(ctx context.Context) error {
	h.cancel()
	return h.Held.Release(ctx)
}

// TestLockLostMidRedemption: a refresher loses its lock while redeeming, so
// a second instance redeems the same refresh token. Without a grace period
// the upstream revokes the family: every instance then gets a typed,
// permanent ErrRefreshRevoked, and nothing loops (the upstream is asked no
// more). With a grace period covering the overlap, nothing is revoked.
func TestLockLostMidRedemption(t *testing.T) {
	for _, grace := range []time.Duration{0, time.Minute} {
		t.Run("grace "+grace.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				up := tokentest.NewRotating(time.Hour)
				up.Latency = time.Second
				up.Grace = grace
				st := tokentest.NewStore()
				l := &losingLocker{st: st, start: make(chan struct{})}
				srcs := rotatingSources(t, up, st, 2, l)
				ctx := context.Background()
				done := make(chan error, 1)
				go func() { _, err := srcs[0].Token(ctx); done <- err }()
				time.Sleep(500 * time.Millisecond) // srcs[0] is redeeming
				close(l.start)                     // its lock is lost
				_, err1 := srcs[1].Token(ctx)      // redeems the same refresh token
				err0 := <-done
				synctest.Wait()
				after := up.Redemptions()
				time.Sleep(time.Hour) // callers keep asking
				for _, s := range srcs {
					_, _ = s.Token(ctx)
				}
				t.Logf("grace %v: redemptions %d, revocations %d, errors %v / %v", grace, up.Redemptions(), up.Revocations(), err0, err1)
				if grace > 0 {
					if up.Revocations() != 0 {
						t.Errorf("%d revocations with a grace period", up.Revocations())
					}
					return
				}
				if up.Revocations() != 1 {
					t.Fatalf("%d revocations, want 1 (the reuse)", up.Revocations())
				}
				for i, s := range srcs {
					if _, err := s.Token(ctx); !errors.Is(err, token.ErrRefreshRevoked) {
						t.Errorf("instance %d: %v, want ErrRefreshRevoked", i, err)
					}
				}
				// The first instance's reply came after the revocation and
				// committed the (revoked) family's new state: each instance
				// may send that generation once, never twice.
				if n := up.Redemptions() - after; n > len(srcs) {
					t.Errorf("%d more redemptions of a revoked family within the hour, want at most %d (one per instance)", n, len(srcs))
				}
			})
		})
	}
}

// TestSeedAfterRevocation: a new authorization (SeedRefresh) ends the
// permanent backoff of a revoked family at once.
func TestSeedAfterRevocation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.NewRotating(time.Hour)
		st := tokentest.NewStore()
		srcs := rotatingSources(t, up, st, 2, st)
		ctx := context.Background()
		if err := srcs[0].SeedRefresh(ctx, "rt-unknown-to-the-upstream"); err != nil {
			t.Fatal(err)
		}
		if _, err := srcs[0].Token(ctx); !errors.Is(err, token.ErrRefreshRevoked) {
			t.Fatalf("refused state: %v, want ErrRefreshRevoked", err)
		}
		if _, err := srcs[1].Token(ctx); !errors.Is(err, token.ErrRefreshRevoked) {
			t.Fatalf("other instance: %v, want ErrRefreshRevoked", err)
		}
		if err := srcs[1].SeedRefresh(ctx, up.Authorize()); err != nil {
			t.Fatal(err)
		}
		for i, s := range srcs {
			synctest.Wait()
			if tok, err := s.Token(ctx); err != nil || !up.Valid(tok.Value) {
				t.Errorf("instance %d after SeedRefresh: %v, %v", i, tok, err)
			}
		}
		if err := srcs[0].DeleteRefresh(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := st.LoadRefresh(ctx); !errors.Is(err, token.ErrNoRefreshState) {
			t.Errorf("after DeleteRefresh: %v", err)
		}
	})
}
