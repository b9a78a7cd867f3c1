package rediscache_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func newUpstream(lifetime time.Duration) *tokentest.Upstream { return tokentest.New(lifetime) }

type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}

// numSub counts the subscribers of channel, on every node of a cluster.
func numSub(ctx context.Context, rdb redis.UniversalClient, channel string) (int64, error) {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		m, err := rdb.PubSubNumSub(ctx, channel).Result()
		return m[channel], err
	}
	var mu sync.Mutex
	var total int64
	err := cc.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error {
		m, err := node.PubSubNumSub(ctx, channel).Result()
		mu.Lock()
		total += m[channel]
		mu.Unlock()
		return err
	})
	return total, err
}

func jsonLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }

// raceEnabled is set under the race detector.
var raceEnabled bool

// think is the pause between a load goroutine's calls.
func think() time.Duration {
	if raceEnabled {
		return 5 * time.Millisecond
	}
	return 2 * time.Millisecond
}

// newCache is rediscache.New for arguments a test knows to be valid.
func newCache(tb testing.TB, rdb redis.UniversalClient, o rediscache.Options) *rediscache.Cache {
	tb.Helper()
	c, err := rediscache.New(rdb, o)
	if err != nil {
		tb.Fatalf("rediscache.New: %v", err)
	}
	return c
}

// testOptions are fast settings for tests: short polls and lock TTLs.
func testOptions(p string) rediscache.Options {
	return rediscache.Options{
		Prefix:  p,
		LockTTL: 500 * time.Millisecond,
		Source: token.Options{
			RefreshAhead:    0.2,
			MinRefreshAhead: time.Millisecond,
			PollInterval:    20 * time.Millisecond,
			FetchTimeout:    2 * time.Second,
			Logger:          quiet,
		},
	}
}

// instances returns n Sources of the credential "c", each with its own Redis
// client and Store, like n processes.
func instances(t *testing.T, b backend, n int, f token.Fetcher, o rediscache.Options) []*token.Source {
	t.Helper()
	var srcs []*token.Source
	for range n {
		s, err := newCache(t, b.Client(t), o).Source("c", f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		srcs = append(srcs, s)
	}
	return srcs
}

// skewed shifts a clock and the expiry of the tokens a fetcher returns, as a
// fetcher on a host whose clock is off would see them.
func skewed(f token.Fetcher, d time.Duration) (token.Fetcher, func() time.Time) {
	return token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
			tok, err := f.Fetch(ctx)
			tok.ExpiresAt = tok.ExpiresAt.Add(d)
			return tok, err
		}), func() time.Time {
			return time.Now().Add(d)
		}
}

// TestOneFetchPerLifetime is the central claim: 8 instances, each with its own
// client, 64 goroutines each, 12 token lifetimes, a strict upstream. Two of the
// instances have clocks ten minutes off. Every token is replaced only inside
// its refresh-ahead window, no caller sees an error, and a replaced token is
// handed out only within the notification window.
func TestOneFetchPerLifetime(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		const lifetime = 500 * time.Millisecond
		up := newUpstream(lifetime)
		o := testOptions(prefix(t))
		var srcs []*token.Source
		for _, skew := range []time.Duration{10 * time.Minute, -10 * time.Minute, 0, 0, 0, 0, 0, 0} {
			oi := o
			f, now := skewed(up, skew)
			oi.Source.Now = now
			s, err := newCache(t, b.Client(t), oi).Source("c", f)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			srcs = append(srcs, s)
		}
		res := tokentest.Load(context.Background(), srcs, tokentest.LoadConfig{
			Goroutines: 64, Duration: 12 * lifetime, Think: think(), Upstream: up})
		checkLoad(t, res, up, lifetime, o.Source.RefreshAhead)
	})
}

func checkLoad(t *testing.T, res tokentest.Result, up *tokentest.Upstream, lifetime time.Duration, ahead float64) {
	t.Helper()
	t.Logf("%s; upstream issued %d", res, up.Issued())
	if res.Errors > 0 {
		t.Errorf("%d callers got errors, first: %v", res.Errors, res.FirstErr)
	}
	times := up.IssueTimes()
	minGap := time.Duration(float64(lifetime)*(1-ahead)) - lifetime/10
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < minGap {
			t.Errorf("token %d issued %v after the previous one; want at least %v (a duplicate fetch)", i, gap, minGap)
		}
	}
	// One fetch per lifetime less the refresh-ahead window. More would be
	// duplicate fetches; fewer means refreshes ran late on a starved CPU.
	want := int(res.Duration / time.Duration(float64(lifetime)*(1-ahead)))
	if n := up.Issued(); n > want+1 {
		t.Errorf("upstream issued %d tokens over %v; want at most %d", n, res.Duration, want+1)
	} else if n < want-1 {
		t.Logf("upstream issued only %d of %d tokens: refreshes ran late", n, want)
	}
	if up.Calls() != up.Issued() {
		t.Errorf("upstream calls %d != tokens issued %d", up.Calls(), up.Issued())
	}
	// The notification window is a few ms on loopback; allow for the
	// scheduling delays of 512 goroutines on a loaded 2-core machine.
	if res.MaxStale > 250*time.Millisecond {
		t.Errorf("a caller got a token that had been invalid for %v", res.MaxStale)
	}
}

func TestInvalidateStormFetchesOnce(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		up := newUpstream(time.Hour)
		o := testOptions(prefix(t))
		// A storm of 1000 goroutines slows Redis (miniredis shares our two
		// cores): a lock that expires mid-fetch would rightly cost a
		// second fetch, which is not what this test is about.
		o.LockTTL = 5 * time.Second
		srcs := instances(t, b, 8, up, o)
		ctx := context.Background()
		bad, err := srcs[0].Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range srcs {
			if tok, err := s.Token(ctx); err != nil || tok.Value != bad.Value {
				t.Fatalf("Token = %v, %v; want the shared %v", tok, err, bad)
			}
		}
		var wg sync.WaitGroup
		for i := range 1000 {
			wg.Go(func() {
				s := srcs[i%len(srcs)]
				if err := s.Invalidate(ctx, bad.Value); err != nil {
					t.Error(err)
				}
				tok, err := s.Token(ctx)
				if err != nil || tok.Value == bad.Value {
					t.Errorf("after Invalidate: Token = %v, %v", tok, err)
				}
			})
		}
		wg.Wait()
		if n := up.Calls(); n != 2 {
			t.Errorf("upstream calls = %d, want 2 (first token and one refresh)", n)
		}
		for _, s := range srcs {
			if err := s.Invalidate(ctx, bad.Value); err != nil {
				t.Fatal(err)
			}
			if tok, err := s.Token(ctx); err != nil || !up.Valid(tok.Value) {
				t.Fatalf("Token = %v, %v", tok, err)
			}
		}
		if n := up.Calls(); n != 2 {
			t.Errorf("a stale Invalidate fetched: upstream calls = %d, want 2", n)
		}
	})
}

// TestRefresherHangs: the refresher's fetch never returns. Another instance
// completes the refresh within fetch timeout + lock TTL, and the hung
// instance's caller returns by its context.
func TestRefresherHangs(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		o := testOptions(prefix(t))
		o.Source.FetchTimeout = 300 * time.Millisecond
		up := newUpstream(time.Hour)
		stuck := make(chan struct{})
		defer close(stuck)
		entered := make(chan struct{}, 1)
		hang := token.FetcherFunc(func(context.Context) (token.Token, error) {
			entered <- struct{}{}
			<-stuck // ignores its context, like a broken client
			return token.Token{}, errors.New("never")
		})
		a := instances(t, b, 1, hang, o)[0]
		other := instances(t, b, 1, up, o)[0]
		ctx := context.Background()
		aerr := make(chan error, 1)
		go func() {
			actx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			_, err := a.Token(actx)
			aerr <- err
		}()
		<-entered
		start := time.Now()
		// The timed-out fetch counts as an upstream failure: the cluster
		// backs off about a second, and callers retry.
		bound := o.Source.FetchTimeout + o.LockTTL + 2*time.Second
		var tok token.Token
		var err error
		for {
			tok, err = other.Token(ctx)
			if err == nil || !errors.Is(err, token.ErrUpstreamBackoff) || time.Since(start) > bound {
				break
			}
			time.Sleep(10 * time.Millisecond) // a caller retrying
		}
		took := time.Since(start)
		if err != nil || !up.Valid(tok.Value) {
			t.Fatalf("other instance: Token = %v, %v", tok, err)
		}
		if took > bound {
			t.Errorf("recovery took %v, want under %v", took, bound)
		}
		t.Logf("recovered after %v", took)
		if err := <-aerr; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("hung instance's caller: %v, want its deadline", err)
		}
		if up.Calls() != 1 {
			t.Errorf("upstream calls = %d, want 1", up.Calls())
		}
	})
}

// deafLocker hands out locks whose context never reports a loss: a refresher
// that was paused past its lock TTL and has not noticed yet.
type deafLocker struct{ token.Locker }

type deafHeld struct{ token.Held }

func (d deafLocker) TryLock(ctx context.Context) (token.Held, error) {
	h, err := d.Locker.TryLock(ctx)
	if err != nil {
		return nil, err
	}
	return deafHeld{h}, nil
}

func (deafHeld) Context() context.Context { return context.Background() }

// TestLateRefresherIsFenced: refresher A loses its lock during a slow fetch
// without noticing; B refreshes; A's later write is refused and A adopts B's
// token.
func TestLateRefresherIsFenced(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		p := prefix(t)
		o := testOptions(p)
		rdb := b.Client(t)
		up := newUpstream(time.Hour)
		st := newCache(t, rdb, o)
		c, _ := st.Credential("c")
		entered, proceed := make(chan struct{}), make(chan struct{})
		slow := token.FetcherFunc(func(context.Context) (token.Token, error) {
			close(entered)
			<-proceed
			return up.Fetch(ctx)
		})
		a, err := token.NewSource("c", slow, c, deafLocker{c}, o.Source)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		bsrc := instances(t, b, 1, up, o)[0]

		type result struct {
			tok token.Token
			err error
		}
		ares := make(chan result, 1)
		go func() {
			tok, err := a.Token(ctx)
			ares <- result{tok, err}
		}()
		<-entered
		// A's lock expires (its keep-alive was stopped by the pause).
		if err := rdb.Del(ctx, "{"+p+"c}:lock").Err(); err != nil {
			t.Fatal(err)
		}
		btok, err := bsrc.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		close(proceed)
		r := <-ares
		if r.err != nil {
			t.Fatalf("A: %v", r.err)
		}
		if r.tok.Value != btok.Value {
			t.Errorf("A returned its own late token instead of adopting B's")
		}
		sh, err := c.Load(ctx)
		if err != nil || sh.Value != btok.Value {
			t.Errorf("stored token is not B's: %v, %v", sh, err)
		}
	})
}

// TestLostLockStopsFetch: a refresher whose keep-alive finds the lock gone
// abandons its fetch and waits for the instance that took over.
func TestLostLockStopsFetch(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		p := prefix(t)
		o := testOptions(p)
		o.LockTTL = 150 * time.Millisecond
		rdb := b.Client(t)
		up := newUpstream(time.Hour)
		entered := make(chan struct{})
		var once sync.Once
		slow := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
			once.Do(func() { close(entered) })
			<-ctx.Done()
			return token.Token{}, context.Cause(ctx)
		})
		a := instances(t, b, 1, slow, o)[0]
		bsrc := instances(t, b, 1, up, o)[0]
		ares := make(chan error, 1)
		var atok token.Token
		go func() {
			var err error
			atok, err = a.Token(ctx)
			ares <- err
		}()
		<-entered
		// Another instance takes the lock over (as after an expiry).
		if err := rdb.Set(ctx, "{"+p+"c}:lock", "someone-else", time.Second).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.Del(ctx, "{"+p+"c}:lock").Err(); err != nil {
			t.Fatal(err)
		}
		btok, err := bsrc.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-ares; err != nil {
			t.Fatalf("A: %v", err)
		}
		if atok.Value != btok.Value {
			t.Errorf("A = %v, want B's %v", atok, btok)
		}
		if up.Calls() != 1 {
			t.Errorf("upstream calls = %d, want 1", up.Calls())
		}
	})
}

// TestSteadyStateSendsNoCommands counts Redis commands with a go-redis hook.
func TestSteadyStateSendsNoCommands(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		rdb := b.Client(t)
		var n counter
		rdb.AddHook(&n)
		o := testOptions(prefix(t))
		src, err := newCache(t, rdb, o).Source("c", newUpstream(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		ctx := context.Background()
		if _, err := src.Token(ctx); err != nil {
			t.Fatal(err)
		}
		// Start-up ends with the subscription's confirmation, which makes
		// the Source read once more (events sent before it were lost).
		for {
			subs, err := numSub(ctx, rdb, o.Prefix+"events")
			if err != nil {
				t.Fatal(err)
			}
			if subs > 0 {
				break
			}
			time.Sleep(time.Millisecond) // polling server state
		}
		for start, before := time.Now(), n.n.Load(); n.n.Load() == before && time.Since(start) < time.Second; {
			time.Sleep(time.Millisecond) // the re-read follows the confirmation, if that came after the first read
		}
		before := n.n.Load()
		const calls = 100000
		for range calls {
			if _, err := src.Token(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if d := n.n.Load() - before; d != 0 {
			t.Errorf("%d Redis commands for %d steady-state Token calls, want 0", d, calls)
		}
	})
}

// TestWaitersWakeOnNotification: with no token and the lock held elsewhere,
// waiters on several instances return as soon as the other instance writes,
// long before their poll interval.
func TestWaitersWakeOnNotification(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		p := prefix(t)
		o := testOptions(p)
		o.Source.PollInterval = time.Hour // only a notification can wake them
		lat, err := waitersRound(context.Background(), t, b, o, 4, 50)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("write to last of 200 waiters: %v", lat)
		if lat > 2*time.Second {
			t.Errorf("waiters took %v", lat)
		}
	})
}

// waitersRound starts goroutines waiters on each of n new instances, holds the
// lock, writes a token and returns the time from the write to the last
// waiter's return.
func waitersRound(ctx context.Context, tb testing.TB, b backend, o rediscache.Options, n, waiters int) (time.Duration, error) {
	rdb := b.Universal()
	defer rdb.Close()
	c, _ := newCache(tb, rdb, o).Credential("c")
	held, err := c.TryLock(ctx)
	if err != nil {
		return 0, err
	}
	defer held.Release(ctx)

	var srcs []*token.Source
	var cmds []*counter
	var ready sync.WaitGroup
	for range n {
		cl := b.Universal()
		defer cl.Close()
		cnt := new(counter)
		cl.AddHook(cnt)
		cmds = append(cmds, cnt)
		s, err := newCache(tb, cl, o).Source("c", token.FetcherFunc(func(context.Context) (token.Token, error) {
			return token.Token{}, errors.New("a waiter must not fetch")
		}))
		if err != nil {
			return 0, err
		}
		defer s.Close()
		srcs = append(srcs, s)
	}
	var done sync.WaitGroup
	errs := make(chan error, n*waiters)
	ends := make(chan time.Time, n*waiters)
	for _, s := range srcs {
		for range waiters {
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				ready.Done()
				if _, err := s.Token(ctx); err != nil {
					errs <- err
				}
				ends <- time.Now()
			}()
		}
	}
	ready.Wait()
	// Wait until every instance has read the store and tried the lock, so
	// that its waiters depend on the notification...
	for _, cnt := range cmds {
		for cnt.n.Load() < 2 {
			time.Sleep(time.Millisecond) // polling the instances' progress
		}
	}
	// ...and is subscribed, so that the write is heard.
	for {
		subs, err := numSub(ctx, rdb, o.Prefix+"events")
		if err != nil {
			return 0, err
		}
		if subs >= int64(n) {
			break
		}
		time.Sleep(time.Millisecond) // polling server state
	}
	v, err := c.NextVersion(ctx)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := c.Save(ctx, token.Shared{Value: "shared-token-0123456789", Version: v, TTL: time.Hour, Lifetime: time.Hour}); err != nil {
		return 0, err
	}
	done.Wait()
	close(errs)
	close(ends)
	if err := <-errs; err != nil {
		return 0, err
	}
	var last time.Time
	for e := range ends {
		if e.After(last) {
			last = e
		}
	}
	return max(0, last.Sub(start)), nil
}
