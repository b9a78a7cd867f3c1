package tokencacheotel_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	tokencacheotel "github.com/tokencache/tokencache/extra/otel"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// newMetrics returns Metrics on an SDK MeterProvider read by hand.
func newMetrics(t *testing.T, opts ...tokencacheotel.Option) (*tokencacheotel.Metrics, *sdkmetric.ManualReader) {
	t.Helper()
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	m, err := tokencacheotel.New(append(opts, tokencacheotel.WithMeterProvider(mp))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m, r
}

func newSource(t *testing.T, name string, up token.Fetcher, st *tokentest.Store, l token.Locker, h token.Hooks) *token.Source {
	t.Helper()
	s, err := token.NewSource(name, up, st, l, token.Options{Logger: quiet, Hooks: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestScripted: a scripted run (fetches, invalidations, a failure and its
// backoff) shows on every instrument with the values it should.
func TestScripted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, r := newMetrics(t)
		up, st := tokentest.New(10*time.Second), tokentest.NewStore()
		a := newSource(t, "c", up, st, st, m.Hooks())
		b := newSource(t, "c", up, st, st, m.Hooks())
		defer m.Track("c", a)()
		ctx := context.Background()
		tok := mustToken(t, a)                // fetch 1: missing
		must(t, a.Invalidate(ctx, tok.Value)) // removed (mostly: see checkScripted)
		must(t, b.Invalidate(ctx, tok.Value)) // b never had it: stale
		tok = mustToken(t, a)                 // fetch 2: invalidated
		up.FailNext(errors.New("upstream down"))
		must(t, a.Invalidate(ctx, tok.Value))   // removed (mostly)
		if _, err := a.Token(ctx); err == nil { // fetch 3 fails: backoff
			t.Fatal("want the injected failure")
		}
		synctest.Wait()
		c := collect(t, r)
		if n := c.sum(tokencacheotel.NameBackoffActive); n != 1 {
			t.Errorf("backoff.active during the backoff: %d, want 1", n)
		}
		time.Sleep(2 * time.Second)
		mustToken(t, a) // backoff over: fetch 4, invalidated still
		synctest.Wait()
		checkScripted(t, collect(t, r))
		use(t, a)
		checkGauge(t, collect(t, r), 10)
		time.Sleep(3 * time.Second)
		checkGauge(t, collect(t, r), 7)
	})
}

// checkScripted checks the counters and histograms after TestScripted's
// four fetches.
func checkScripted(t *testing.T, c collected) {
	t.Helper()
	checkSums(t, c, []sumWant{
		{tokencacheotel.NameFetches, 4, nil},
		{tokencacheotel.NameFetches, 1, []string{"tokencache.fetch.reason", "missing", "tokencache.fetch.outcome", "ok"}},
		{tokencacheotel.NameFetches, 2, []string{"tokencache.fetch.reason", "invalidated", "tokencache.fetch.outcome", "ok"}},
		{tokencacheotel.NameFetches, 1, []string{"tokencache.fetch.reason", "invalidated", "tokencache.fetch.outcome", "error", "error.type", "temporary"}},
		{tokencacheotel.NameInvalidations, 3, nil},
		{tokencacheotel.NameBackoffActive, 0, nil},
		{tokencacheotel.NameLockLosses, 0, nil},
		{tokencacheotel.NameStoreErrors, 0, nil},
	})
	if n, _ := c.count(tokencacheotel.NameFetchDuration, "tokencache.fetch.outcome", "ok"); n != 3 {
		t.Errorf("fetch.duration ok: %d values, want 3", n)
	}
	// Invalidate starts the refresh before it asks the store to remove
	// the token, so that refresh may replace the token first: then the
	// store says "already replaced" (stale), and the caller of the
	// failing fetch gets the backoff instead of the error. Both splits
	// occur (token's TestHooksScripted flakes on them too).
	if stale := c.sum(tokencacheotel.NameInvalidations, "tokencache.invalidation.result", "stale"); stale < 1 {
		t.Errorf("invalidations: %d stale, want at least b's", stale)
	}
	if n, _ := c.count(tokencacheotel.NameFetchDuration, "tokencache.fetch.outcome", "error", "error.type", "temporary"); n != 1 {
		t.Errorf("fetch.duration error: %d values, want 1", n)
	}
	nErr, _ := c.count(tokencacheotel.NameWaitDuration, "tokencache.wait.outcome", "error")
	nBackoff, _ := c.count(tokencacheotel.NameWaitDuration, "tokencache.wait.outcome", "backoff")
	if nErr+nBackoff != 1 {
		t.Errorf("wait.duration error %d, backoff %d: want 1 in all", nErr, nBackoff)
	}
	if n, _ := c.count(tokencacheotel.NameWaitDuration, "tokencache.wait.outcome", "ok"); n == 0 {
		t.Error("wait.duration ok: no value")
	}
}

type sumWant struct {
	name string
	want int64
	kv   []string
}

func checkSums(t *testing.T, c collected, wants []sumWant) {
	t.Helper()
	for _, w := range wants {
		if got := c.sum(w.name, w.kv...); got != w.want {
			t.Errorf("%s %v: %d, want %d", w.name, w.kv, got, w.want)
		}
	}
}

// checkGauge checks that the remaining lifetime is one point of want seconds.
// Zero means no point.
func checkGauge(t *testing.T, c collected, want float64) {
	t.Helper()
	ps := c.gauge(tokencacheotel.NameRemainingLifetime)
	if want == 0 && len(ps) == 0 {
		return
	}
	if len(ps) != 1 || ps[0].Value != want {
		t.Errorf("remaining lifetime: %+v, want one point of %v", ps, want)
	}
}

// TestLockLostAndStoreError: a refresh lock lost mid-fetch and a store
// outage are counted.
func TestLockLostAndStoreError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, r := newMetrics(t)
		up, st := tokentest.New(time.Hour), tokentest.NewStore()
		l := &losingLocker{st: st, start: make(chan struct{})}
		s := newSource(t, "c", up, st, l, m.Hooks())
		entered, release := up.Hold()
		done := make(chan error)
		go func() { _, err := s.Token(context.Background()); done <- err }()
		<-entered
		close(l.start) // the lock is lost mid-fetch
		synctest.Wait()
		release()
		<-done
		tok := mustToken(t, s)
		st.SetDown(true)
		_ = s.Invalidate(context.Background(), tok.Value)
		_, _ = s.Token(context.Background())
		st.SetDown(false)
		synctest.Wait()
		c := collect(t, r)
		if n := c.sum(tokencacheotel.NameLockLosses); n != 1 {
			t.Errorf("lock.losses: %d, want 1", n)
		}
		if n := c.sum(tokencacheotel.NameStoreErrors, "tokencache.store.operation", "read shared token"); n != 1 {
			t.Errorf("store.errors: %d, want 1", n)
		}
	})
}

// use calls Token on each of srcs once the Source is quiet, as steady
// traffic does: a Source whose token was just replaced may leave it idle
// (see token's nearcache.go), and Cached reports nothing then, until a Token
// call marks it used.
func use(t *testing.T, srcs ...*token.Source) {
	t.Helper()
	synctest.Wait()
	for _, s := range srcs {
		mustToken(t, s)
	}
}

func mustToken(t *testing.T, s *token.Source) token.Token {
	t.Helper()
	tok, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
