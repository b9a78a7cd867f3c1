package tokencacheotel_test

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// collected is one collection of a manual reader.
type collected struct {
	t  *testing.T
	rm metricdata.ResourceMetrics
}

func collect(t *testing.T, r *sdkmetric.ManualReader) collected {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return collected{t, rm}
}

func (c collected) find(name string) (metricdata.Metrics, bool) {
	for _, sm := range c.rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// matches reports whether set has every key=value of want.
func matches(set attribute.Set, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		v, ok := set.Value(attribute.Key(want[i]))
		if !ok || v.Emit() != want[i+1] {
			return false
		}
	}
	return true
}

// sum adds the points of the counter or up-down counter name whose
// attributes have the key-value pairs kv.
func (c collected) sum(name string, kv ...string) int64 {
	m, _ := c.find(name)
	var n int64
	if s, ok := m.Data.(metricdata.Sum[int64]); ok {
		for _, p := range s.DataPoints {
			if matches(p.Attributes, kv) {
				n += p.Value
			}
		}
	}
	return n
}

// count returns how many values the histogram name recorded with kv, and
// their sum.
func (c collected) count(name string, kv ...string) (n uint64, total float64) {
	m, _ := c.find(name)
	if h, ok := m.Data.(metricdata.Histogram[float64]); ok {
		for _, p := range h.DataPoints {
			if matches(p.Attributes, kv) {
				n += p.Count
				total += p.Sum
			}
		}
	}
	return n, total
}

// gauge returns the points of the gauge name.
func (c collected) gauge(name string) []metricdata.DataPoint[float64] {
	m, _ := c.find(name)
	g, _ := m.Data.(metricdata.Gauge[float64])
	return g.DataPoints
}

// values returns every attribute value of every point collected.
func (c collected) values() []string {
	var sets []attribute.Set
	for _, sm := range c.rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					sets = append(sets, p.Attributes)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					sets = append(sets, p.Attributes)
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					sets = append(sets, p.Attributes)
				}
			}
		}
	}
	var vs []string
	for _, s := range sets {
		for _, kv := range s.ToSlice() {
			vs = append(vs, kv.Value.Emit())
		}
	}
	return vs
}

// losingLocker hands out locks of st; the first one is lost when the test
// closes start (as in token/refresh_test.go).
type losingLocker struct {
	st    *tokentest.Store
	start chan struct{}
	n     atomic.Int32
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
			_ = h.Release(context.Background())
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
