package token_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// journal records the writes of a token store and a separate refresh
// store, in order.
type journal struct {
	mu     sync.Mutex
	writes []string
	// failSaves makes the next Saves fail, as a crash between the commit
	// and the token's save would leave the store.
	failSaves int
}

func (j *journal) add(w string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.writes = append(j.writes, w)
}

func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.writes, " ")
}

// journaledStore is a token store that is not a RefreshStore.
type journaledStore struct {
	*tokentest.Store
	j *journal
}

func (s journaledStore) Save(ctx context.Context, sh token.Shared) error {
	s.j.mu.Lock()
	fail := s.j.failSaves > 0
	if fail {
		s.j.failSaves--
	}
	s.j.mu.Unlock()
	if fail {
		s.j.add("save-failed")
		return errors.New("connection reset")
	}
	s.j.add("save")
	return s.Store.Save(ctx, sh)
}

// journaledRefresh is a separate RefreshStore. flaky makes commits fail
// after they were applied (a reply lost to a timeout) or without being
// applied; either way the caller sees an error.
type journaledRefresh struct {
	rs token.RefreshStore
	j  *journal
	mu sync.Mutex
	// lostReplies: the next commits are applied but report an error.
	// refused: the next commits fail unapplied.
	lostReplies, refused int
}

func (r *journaledRefresh) LoadRefresh(ctx context.Context) (token.RefreshState, error) {
	return r.rs.LoadRefresh(ctx)
}
func (r *journaledRefresh) SeedRefresh(ctx context.Context, v string) (int64, error) {
	return r.rs.SeedRefresh(ctx, v)
}
func (r *journaledRefresh) DeleteRefresh(ctx context.Context) error { return r.rs.DeleteRefresh(ctx) }

func (r *journaledRefresh) CommitRefresh(ctx context.Context, gen int64, next string) error {
	r.mu.Lock()
	lost, refused := r.lostReplies > 0, r.refused > 0 && r.lostReplies == 0
	if lost {
		r.lostReplies--
	} else if refused {
		r.refused--
	}
	r.mu.Unlock()
	if refused {
		r.j.add("commit-failed")
		return errors.New("i/o timeout")
	}
	err := r.rs.CommitRefresh(ctx, gen, next)
	switch {
	case err != nil:
		r.j.add("commit-fenced")
		return err
	case lost:
		r.j.add("commit-reply-lost")
		return errors.New("i/o timeout")
	}
	r.j.add("commit")
	return nil
}

// errorLog counts errors logged.
type errorLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *errorLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelError }
func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}
func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *errorLog) WithGroup(string) slog.Handler      { return l }
func (l *errorLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.msgs)
}

// separateSources returns n Sources of one credential whose refresh state
// lives in a separate store (as extra/pgrefresh keeps it), seeded.
func separateSources(t *testing.T, up *tokentest.Rotating, n int, log *slog.Logger) ([]*token.Source, *journal, *journaledRefresh) {
	t.Helper()
	j := &journal{}
	st := journaledStore{Store: tokentest.NewStore(), j: j}
	rs := &journaledRefresh{rs: tokentest.NewStore(), j: j}
	var srcs []*token.Source
	for range n {
		s, err := token.NewSource("authorizer", up, st, st.Store, token.Options{Logger: log, RefreshStore: rs})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		srcs = append(srcs, s)
	}
	if err := srcs[0].SeedRefresh(t.Context(), up.Authorize()); err != nil {
		t.Fatal(err)
	}
	return srcs, j, rs
}

// TestSeparateRefreshStoreCommitsFirst: with the refresh state in a store
// of its own, each new state is committed before the token redeemed with
// it is saved; a failed save after the commit (a crash between the two)
// costs only the access token: the next refresh redeems the new state,
// and nothing is revoked.
func TestSeparateRefreshStoreCommitsFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.NewRotating(10 * time.Second)
		srcs, j, _ := separateSources(t, up, 2, quiet)
		ctx := context.Background()
		call := func(s *token.Source, when string) {
			t.Helper()
			if tok, err := s.Token(ctx); err != nil || !up.Valid(tok.Value) {
				t.Fatalf("Token %s: %v", when, err)
			}
		}
		for range 3 {
			call(srcs[0], "")
			time.Sleep(10 * time.Second)
		}
		j.mu.Lock()
		j.failSaves = 1
		j.mu.Unlock()
		for range 2 {
			time.Sleep(10 * time.Second) // a refresh meets the failed save
			call(srcs[0], "after the lost save")
			call(srcs[1], "on the other instance after the lost save")
		}
		// Each token was saved (or failed to be) right after its state was
		// committed, and the state after the lost save was redeemed.
		got := strings.Fields(j.String())
		failed := 0
		for i, w := range got {
			switch {
			case strings.HasPrefix(w, "save") && (i == 0 || got[i-1] != "commit"):
				t.Errorf("write %d (%s) not right after a commit", i, w)
			case w == "save-failed":
				failed++
				if i+2 >= len(got) || got[i+1] != "commit" || got[i+2] != "save" {
					t.Errorf("after the failed save: %v, want a commit and a save", got[i+1:])
				}
			}
		}
		t.Logf("writes: %s", j)
		if failed != 1 || up.Revocations() != 0 {
			t.Errorf("%d failed saves (want 1), %d revocations (want 0)", failed, up.Revocations())
		}
	})
}

// TestCommitRetried: a commit whose reply is lost (applied, but reported
// as a timeout) is tried again; the retry is fenced, finds its own state
// stored, and nothing is logged as lost. A commit that fails every try is
// logged as an error, and the state it carried is lost: the next refresh
// redeems the replaced one, which a strict upstream refuses, once.
func TestCommitRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.NewRotating(10 * time.Second)
		errs := &errorLog{}
		srcs, j, rs := separateSources(t, up, 1, slog.New(errs))
		ctx := context.Background()
		rs.lostReplies = 1
		if _, err := srcs[0].Token(ctx); err != nil {
			t.Fatal(err)
		}
		if got, want := j.String(), "commit-reply-lost commit-fenced save"; got != want {
			t.Errorf("writes: %s, want %s", got, want)
		}
		if errs.count() != 0 {
			t.Errorf("%d errors logged for a commit that was applied", errs.count())
		}
		time.Sleep(10 * time.Second)
		if tok, err := srcs[0].Token(ctx); err != nil || !up.Valid(tok.Value) {
			t.Fatalf("after the retried commit: %v", err)
		}

		rs.mu.Lock()
		rs.refused = 3
		rs.mu.Unlock()
		time.Sleep(10 * time.Second)
		if _, err := srcs[0].Token(ctx); err != nil {
			t.Fatal(err) // the token is good; its refresh state is lost
		}
		if errs.count() != 1 {
			t.Errorf("%d errors logged for a lost refresh state, want 1", errs.count())
		}
		time.Sleep(10 * time.Second)
		if _, err := srcs[0].Token(ctx); !errors.Is(err, token.ErrRefreshRevoked) {
			t.Errorf("after the lost state: %v, want ErrRefreshRevoked", err)
		}
		if up.Revocations() != 1 {
			t.Errorf("%d revocations, want 1", up.Revocations())
		}
	})
}

// TestRevokedNeverLoops: callers of a credential whose refresh state the
// upstream refuses get ErrRefreshRevoked; each instance sends that state
// at most once, however long they keep asking.
func TestRevokedNeverLoops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.NewRotating(time.Hour)
		st := tokentest.NewStore()
		srcs := rotatingSources(t, up, st, 4, st)
		ctx := context.Background()
		if err := srcs[0].SeedRefresh(ctx, "rt-unknown-to-the-upstream"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		other := 0
		for _, s := range srcs {
			for range 8 {
				wg.Go(func() {
					for start := time.Now(); time.Since(start) < 3*time.Hour; time.Sleep(time.Second) {
						if _, err := s.Token(ctx); !errors.Is(err, token.ErrRefreshRevoked) {
							mu.Lock()
							other++
							mu.Unlock()
						}
					}
				})
			}
		}
		wg.Wait()
		t.Logf("4 instances × 8 goroutines, one call a second for 3 hours: %d redemptions", up.Redemptions())
		if up.Redemptions() > len(srcs) || other != 0 {
			t.Errorf("%d redemptions (want at most %d: one per instance), %d results other than ErrRefreshRevoked", up.Redemptions(), len(srcs), other)
		}
	})
}

// TestRedeemerNeedsTheLock: FetchWhenStoreDown fetches without the lock,
// so two instances could redeem one state: it is refused with a Redeemer.
func TestRedeemerNeedsTheLock(t *testing.T) {
	st := tokentest.NewStore()
	_, err := token.NewSource("authorizer", tokentest.NewRotating(time.Hour), st, st, token.Options{FetchWhenStoreDown: true})
	if !errors.Is(err, token.ErrInvalidConfig) {
		t.Errorf("NewSource: %v, want ErrInvalidConfig", err)
	}
}

// bigState is a Redeemer whose upstream rotates to a state too large to
// store.
type bigState struct{ *tokentest.Rotating }

func (b bigState) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	tok, _, err := b.Rotating.Redeem(ctx, refresh)
	return tok, strings.Repeat("r", token.MaxTokenLen+1), err
}

// TestOversizedRefreshState: a state over MaxTokenLen is refused the same
// way whether it comes from the upstream or from SeedRefresh: an error
// wrapping ErrTokenTooLarge, and nothing stored.
func TestOversizedRefreshState(t *testing.T) {
	up := tokentest.NewRotating(time.Hour)
	st := tokentest.NewStore()
	s, err := token.NewSource("c", bigState{up}, st, st, token.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.SeedRefresh(ctx, strings.Repeat("r", token.MaxTokenLen+1)); !errors.Is(err, token.ErrTokenTooLarge) {
		t.Errorf("SeedRefresh of %d bytes: %v, want ErrTokenTooLarge", token.MaxTokenLen+1, err)
	}
	first := up.Authorize()
	if err := s.SeedRefresh(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token(ctx); !errors.Is(err, token.ErrTokenTooLarge) {
		t.Errorf("Token with an oversized next state: %v, want ErrTokenTooLarge", err)
	}
	if rs, err := st.LoadRefresh(ctx); err != nil || rs.Value != first {
		t.Errorf("stored state changed: %d bytes, %v", len(rs.Value), err)
	}
}

// expiredOnce is a Redeemer whose first redemption rotates the state but
// returns an access token that has already expired.
type expiredOnce struct {
	*tokentest.Rotating
	first atomic.Bool
	sent  []string // the refresh states redeemed, in order
	mu    sync.Mutex
}

func (e *expiredOnce) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	e.mu.Lock()
	e.sent = append(e.sent, refresh)
	e.mu.Unlock()
	tok, next, err := e.Rotating.Redeem(ctx, refresh)
	if err == nil && e.first.CompareAndSwap(false, true) {
		tok.ExpiresAt = time.Now().Add(-time.Second)
	}
	return tok, next, err
}

// TestRotatedStateKeptWithABadToken: a redemption that rotates the state
// but returns an unusable access token (expired) still commits the new
// state: the next redemption sends it, and nothing is revoked.
func TestRotatedStateKeptWithABadToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &expiredOnce{Rotating: tokentest.NewRotating(time.Hour)}
		for _, separate := range []bool{false, true} {
			up.first.Store(false)
			st := tokentest.NewStore()
			o := token.Options{Logger: quiet}
			if separate {
				o.RefreshStore = &journaledRefresh{rs: tokentest.NewStore(), j: &journal{}}
			}
			s, err := token.NewSource("c", up, journaledStore{Store: st, j: &journal{}}, st, o)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SeedRefresh(context.Background(), up.Authorize()); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Token(context.Background()); !errors.Is(err, token.ErrInvalidToken) {
				t.Fatalf("separate=%v: first Token: %v, want ErrInvalidToken", separate, err)
			}
			time.Sleep(2 * time.Second) // the backoff after the bad token
			if tok, err := s.Token(context.Background()); err != nil || !up.Valid(tok.Value) {
				t.Errorf("separate=%v: after the bad token: %v, %v", separate, tok, err)
			}
			s.Close()
		}
		if up.Revocations() != 0 {
			t.Errorf("%d revocations: the rotated state was dropped (sent %d states)", up.Revocations(), len(up.sent))
		}
	})
}

// TestWaiterNeverGetsAnExpiredToken: a caller that joins a refresh is not
// handed the token that refresh ended with if it expired meanwhile. The
// FetchDone hook stands for a starved scheduler: it holds the refresh past
// the half-second token's expiry before the waiters wake.
func TestWaiterNeverGetsAnExpiredToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.New(500 * time.Millisecond)
		st := tokentest.NewStore()
		var slow atomic.Bool
		slow.Store(true)
		hooks := token.Hooks{FetchDone: func(token.FetchDoneInfo) {
			if slow.CompareAndSwap(true, false) {
				time.Sleep(600 * time.Millisecond)
			}
		}}
		s, err := token.NewSource("c", up, st, st, token.Options{Logger: quiet, Hooks: hooks})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		tok, err := s.Token(context.Background())
		if err != nil || !tok.Valid(time.Now()) {
			t.Errorf("Token: %v (expired %v ago), %v; want a valid token", tok, time.Since(tok.ExpiresAt), err)
		}
	})
}

// slowReply is a store whose Load replies a second after it read: the
// reply spent that second in transit (or in a starved process).
type slowReply struct{ *tokentest.Store }

func (s slowReply) Load(ctx context.Context) (token.Shared, error) {
	sh, err := s.Store.Load(ctx)
	time.Sleep(time.Second)
	return sh, err
}

// TestExpiryCountsFromTheRequest: a token read from the store expires
// when the store said, counted from when the read was sent, not from when
// its reply arrived: never later than the upstream's expiry.
func TestExpiryCountsFromTheRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.New(10 * time.Second)
		st := tokentest.NewStore()
		a, err := token.NewSource("c", up, st, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := token.NewSource("c", up, slowReply{st}, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		ta, err := a.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		tb, err := b.Token(context.Background())
		if err != nil || tb.Value != ta.Value {
			t.Fatalf("b: %v, %v; want a's token", tb, err)
		}
		if tb.ExpiresAt.After(ta.ExpiresAt) {
			t.Errorf("b's copy expires %v after the upstream's token", tb.ExpiresAt.Sub(ta.ExpiresAt))
		}
	})
}

// TestCloseMidRedemption: Close while a redemption is in flight waits for
// it to be committed (a rolling deploy closes Sources at any moment): the
// state the upstream issued is stored when Close returns.
func TestCloseMidRedemption(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.NewRotating(time.Hour)
		up.Latency = 3 * time.Second
		st := tokentest.NewStore()
		s, err := token.NewSource("c", up, st, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SeedRefresh(context.Background(), up.Authorize()); err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = s.Token(context.Background()) }()
		time.Sleep(time.Second) // mid-redemption
		_ = s.Close()
		rs, err := st.LoadRefresh(context.Background())
		if err != nil || rs.Generation != 2 {
			t.Errorf("after Close: generation %d (%v), want 2: the redeemed state was lost", rs.Generation, err)
		}
	})
}

// slowCommit is a RefreshStore whose commits take a second.
type slowCommit struct{ token.RefreshStore }

func (s slowCommit) CommitRefresh(ctx context.Context, gen int64, next string) error {
	time.Sleep(time.Second)
	return s.RefreshStore.CommitRefresh(ctx, gen, next)
}

// TestSavedTTLCountsFromTheFetch: the token is saved with the time it has
// left when the save is sent, not when it was fetched: a slow commit
// before it does not make other instances' copies outlive it.
func TestSavedTTLCountsFromTheFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := tokentest.NewRotating(10 * time.Second)
		st := tokentest.NewStore()
		o := token.Options{Logger: quiet, RefreshStore: slowCommit{tokentest.NewStore()}}
		a, err := token.NewSource("c", up, journaledStore{Store: st, j: &journal{}}, st, o)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if err := a.SeedRefresh(context.Background(), up.Authorize()); err != nil {
			t.Fatal(err)
		}
		upstreamExpiry := time.Now().Add(10 * time.Second) // redeemed now, no latency
		ta, err := a.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		sh, err := st.Load(context.Background())
		if err != nil || sh.Value != ta.Value {
			t.Fatalf("stored: %v", err)
		}
		if at := time.Now().Add(sh.TTL); at.After(upstreamExpiry) {
			t.Errorf("the stored token outlives the upstream's by %v", at.Sub(upstreamExpiry))
		}
		if ta.ExpiresAt.After(upstreamExpiry) {
			t.Errorf("the Source's token outlives the upstream's by %v", ta.ExpiresAt.Sub(upstreamExpiry))
		}
	})
}
