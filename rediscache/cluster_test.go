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

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func newUpstream(lifetime time.Duration) *tokentest.Upstream { return tokentest.New(lifetime) }

// syncBuffer collects log output; it is safe for concurrent use.
type syncBuffer = scenario.Logs

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

// source returns a Source of the credential "c" on rdb that fetches with f,
// closed when the test ends.
func source(tb testing.TB, rdb redis.UniversalClient, o rediscache.Options, f token.Fetcher) *token.Source {
	tb.Helper()
	s, err := newCache(tb, rdb, o).Source("c", f)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
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

// redisBackend runs the shared scenarios on b: instance i of the credential
// "c" has a Redis client and Cache of its own, like a process, with the
// options o (whose Source options the scenario sets).
func redisBackend(t *testing.T, b backend, o rediscache.Options) scenario.Backend {
	t.Helper()
	c, err := newCache(t, b.Client(t), o).Credential("c")
	if err != nil {
		t.Fatal(err)
	}
	return scenario.Backend{
		NewSource: func(t *testing.T, _ int, f token.Fetcher, so token.Options) *token.Source {
			oi := o
			oi.Source = so
			return source(t, b.Client(t), oi, f)
		},
		Store:   c,
		Options: o.Source,
		Think:   think(),
		// The notification window is a few ms on loopback; allow for the
		// scheduling delays of 512 goroutines on a loaded 2-core machine.
		MaxStale: 250 * time.Millisecond,
	}
}

// instances returns n Sources of the credential "c", each with its own Redis
// client and Store, like n processes.
func instances(t *testing.T, b backend, n int, f token.Fetcher, o rediscache.Options) []*token.Source {
	t.Helper()
	return redisBackend(t, b, o).Sources(t, n, f, o.Source)
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
		be := redisBackend(t, b, testOptions(prefix(t)))
		newSource := be.NewSource
		be.NewSource = func(t *testing.T, i int, f token.Fetcher, o token.Options) *token.Source {
			if skew := []time.Duration{10 * time.Minute, -10 * time.Minute}; i < len(skew) {
				f, o.Now = skewed(f, skew[i])
			}
			return newSource(t, i, f, o)
		}
		scenario.OneFetchPerLifetime(t, be, 500*time.Millisecond, 12)
	})
}

func TestInvalidateStormFetchesOnce(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		o := testOptions(prefix(t))
		// A storm of 1000 goroutines slows Redis (miniredis shares our two
		// cores): a lock that expires mid-fetch would rightly cost a
		// second fetch, which is not what this test is about.
		o.LockTTL = 5 * time.Second
		scenario.InvalidateStormFetchesOnce(t, redisBackend(t, b, o))
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
		scenario.Retry(bound, 10*time.Millisecond, func() bool {
			tok, err = other.Token(ctx)
			return !errors.Is(err, token.ErrUpstreamBackoff)
		})
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

// TestSteadyStateSendsNoCommands counts Redis commands with a go-redis hook
// over 100,000 Token calls in a steady state: a span in which the Source,
// started up (its first token fetched and shared, its subscription
// confirmed), makes no store or lock call. Background work that start-up
// leaves (the re-read the confirmation causes, the lock's release) may
// overlap a span: then the span is measured again.
func TestSteadyStateSendsNoCommands(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		rdb := b.Client(t)
		var n counter
		rdb.AddHook(&n)
		src, probe := probed(t, rdb, testOptions(prefix(t)), newUpstream(time.Hour))
		ctx := context.Background()
		if _, err := src.Token(ctx); err != nil {
			t.Fatal(err)
		}
		probe.Wait(t, 10*time.Second, "the subscription's confirmation", func(c scenario.Counts) bool {
			return c.Events[token.Resync] > 0
		})
		const calls = 100000
		for span := 1; ; span++ {
			before, cmds := probe.Counts(), n.n.Load()
			for range calls {
				if _, err := src.Token(ctx); err != nil {
					t.Fatal(err)
				}
			}
			after, d := probe.Counts(), n.n.Load()-cmds
			if before.InFlight == 0 && after.InFlight == 0 && after.Calls == before.Calls {
				if d != 0 {
					t.Errorf("%d Redis commands for %d steady-state Token calls, want 0", d, calls)
				}
				break
			}
			t.Logf("span %d overlapped the Source's background work (%+v, then %+v); measuring again", span, before, after)
			if span == 10 {
				t.Fatalf("the Source never settled: it made store calls in each of %d spans of %d Token calls", span, calls)
			}
			probe.Wait(t, 5*time.Second, "the background work ends", func(c scenario.Counts) bool { return c.InFlight == 0 })
		}
	})
}

// probed returns a Source of the credential "c" on rdb, built as
// Cache.Source builds it but with a Probe in front of its Store and Locker,
// and the Probe.
func probed(t testing.TB, rdb redis.UniversalClient, o rediscache.Options, f token.Fetcher) (*token.Source, *scenario.Probe) {
	t.Helper()
	c, err := newCache(t, rdb, o).Credential("c")
	if err != nil {
		t.Fatal(err)
	}
	p := scenario.NewProbe(c, c)
	s, err := token.NewSource("c", f, p, p, o.Source)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, p
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
	var probes []*scenario.Probe
	for range n {
		cl := b.Universal()
		defer cl.Close()
		s, p := probed(tb, cl, o, token.FetcherFunc(func(context.Context) (token.Token, error) {
			return token.Token{}, errors.New("a waiter must not fetch")
		}))
		defer s.Close()
		srcs, probes = append(srcs, s), append(probes, p)
	}
	var done sync.WaitGroup
	errs := make(chan error, n*waiters)
	ends := make(chan time.Time, n*waiters)
	for _, s := range srcs {
		for range waiters {
			done.Go(func() {
				if _, err := s.Token(ctx); err != nil {
					errs <- err
				}
				ends <- time.Now()
			})
		}
	}
	// Wait until every instance has found the lock held, so that its
	// waiters depend on the notification, and is subscribed, so that the
	// write is heard.
	for _, p := range probes {
		p.Wait(tb, 10*time.Second, "an instance's waiters wait on a subscribed Source", func(c scenario.Counts) bool {
			return c.Refused > 0 && c.Events[token.Resync] > 0
		})
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
