package tokentest

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/tokencache/tokencache/token"
)

// TokenSource is what Load calls: a *token.Source, or anything else that hands
// out tokens (a naive per-process cache, for comparison).
type TokenSource interface {
	// Token returns a token, or why not.
	Token(ctx context.Context) (token.Token, error)
}

// Result is what a Load run saw.
type Result struct {
	// Duration is how long the run took.
	Duration time.Duration
	// Calls and Errors count Token calls and those that failed (not
	// counting calls cut short by the end of the run).
	Calls, Errors int64
	// FirstErr is the first error a caller got.
	FirstErr error
	// Invalid counts tokens handed out that the upstream no longer accepted
	// at that moment, and MaxStale is the longest time one of them had been
	// invalid: how long a replaced token lingers in some instance.
	Invalid  int64
	MaxStale time.Duration
	// P50 and P99 are Token latencies (within about 10%).
	P50, P99 time.Duration
}

// String summarizes r in one line.
func (r Result) String() string {
	return fmt.Sprintf("%v: %d calls, %d errors, %d invalid tokens handed out (stale ≤ %v), Token p50 %v p99 %v",
		r.Duration.Round(time.Millisecond), r.Calls, r.Errors, r.Invalid, r.MaxStale, r.P50, r.P99)
}

// LoadConfig describes a Load run.
type LoadConfig struct {
	// Goroutines per source. Default 1.
	Goroutines int
	// Duration of the run. Default 1s.
	Duration time.Duration
	// Think is the pause between one goroutine's calls, standing for the
	// work a caller does with a token. Zero spins (and yields).
	Think time.Duration
	// Upstream, if set, checks every token at the moment it is handed out.
	Upstream *Upstream
	// Invalidate makes a caller that got a token the Upstream rejects report
	// it, as an API client does on WeChat's errcode 40001, if the source has
	// an Invalidate(ctx, token) method.
	Invalidate bool
}

type invalidator interface {
	Invalidate(ctx context.Context, bad string) error
}

// Load calls Token from cfg.Goroutines goroutines on each source for
// cfg.Duration, or until ctx ends.
func Load[S TokenSource](ctx context.Context, srcs []S, cfg LoadConfig) Result {
	if cfg.Goroutines <= 0 {
		cfg.Goroutines = 1
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var total tally
	var wg sync.WaitGroup
	start := time.Now()
	for _, s := range srcs {
		for range cfg.Goroutines {
			wg.Go(func() { total.merge(caller(ctx, s, cfg)) })
		}
	}
	wg.Wait()
	res := total.res
	res.Duration = time.Since(start)
	res.P50, res.P99 = total.h.quantile(0.5), total.h.quantile(0.99)
	return res
}

// tally is what the callers of a Load run saw.
type tally struct {
	mu  sync.Mutex // guards res and h
	res Result
	h   hist
}

func (t *tally) merge(o *tally) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.res.Calls += o.res.Calls
	t.res.Errors += o.res.Errors
	t.res.Invalid += o.res.Invalid
	t.res.MaxStale = max(t.res.MaxStale, o.res.MaxStale)
	if t.res.FirstErr == nil {
		t.res.FirstErr = o.res.FirstErr
	}
	t.h.merge(&o.h)
}

// caller is one Load goroutine: it calls s.Token until ctx ends.
func caller[S TokenSource](ctx context.Context, s S, cfg LoadConfig) *tally {
	var t tally
	r := &t.res
	for ctx.Err() == nil {
		t0 := time.Now()
		tok, err := s.Token(ctx)
		t.h.add(time.Since(t0))
		r.Calls++
		switch {
		case err != nil && ctx.Err() != nil:
			return &t
		case err != nil:
			r.Errors++
			if r.FirstErr == nil {
				r.FirstErr = err
			}
			continue
		case cfg.Upstream != nil:
			if ok, dead := cfg.Upstream.Check(tok.Value); !ok {
				r.Invalid++
				r.MaxStale = max(r.MaxStale, dead)
				if inv, ok := any(s).(invalidator); ok && cfg.Invalidate {
					_ = inv.Invalidate(ctx, tok.Value)
				}
			}
		}
		if cfg.Think > 0 {
			time.Sleep(cfg.Think)
		} else {
			runtime.Gosched()
		}
	}
	return &t
}

// hist is a log-scale latency histogram: 8 buckets per power of two.
type hist struct {
	n [64 * 8]int64
}

func bucket(d time.Duration) int {
	if d < 1 {
		d = 1
	}
	b := int(math.Log2(float64(d)) * 8)
	return min(b, len(hist{}.n)-1)
}

func (h *hist) add(d time.Duration) { h.n[bucket(d)]++ }

func (h *hist) merge(o *hist) {
	for i, v := range o.n {
		h.n[i] += v
	}
}

func (h *hist) quantile(q float64) time.Duration {
	var total int64
	for _, v := range h.n {
		total += v
	}
	if total == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(total)))
	var seen int64
	for i, v := range h.n {
		seen += v
		if seen >= rank {
			return time.Duration(math.Exp2(float64(i+1) / 8)).Round(time.Nanosecond)
		}
	}
	return 0
}
