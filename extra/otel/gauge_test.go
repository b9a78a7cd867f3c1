package tokencacheotel_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	tokencacheotel "github.com/tokencache/tokencache/extra/otel"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestGaugeMinimum: without the credential attribute the gauge is the
// least remaining lifetime over the tracked Sources; untracked, closed
// (once expired) and collected Sources drop out.
func TestGaugeMinimum(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, r := newMetrics(t, tokencacheotel.WithAttributes(attribute.String("service", "x")))
		st1, st2 := tokentest.NewStore(), tokentest.NewStore()
		long := newSource(t, "long", tokentest.New(time.Hour), st1, st1, m.Hooks())
		short := newSource(t, "short", tokentest.New(time.Minute), st2, st2, m.Hooks())
		if ps := collect(t, r).gauge(tokencacheotel.NameRemainingLifetime); len(ps) != 0 {
			t.Errorf("nothing tracked: %+v", ps)
		}
		defer m.Track("long", long)()
		untrack := m.Track("short", short)
		checkGauge(t, collect(t, r), 0) // neither has a token yet: no point
		use(t, long, short)
		checkGauge(t, collect(t, r), 60)
		time.Sleep(10 * time.Second)
		c := collect(t, r)
		checkGauge(t, c, 50)
		if ps := c.gauge(tokencacheotel.NameRemainingLifetime); len(ps) == 1 && !matches(ps[0].Attributes, []string{"service", "x"}) {
			t.Errorf("attributes %v, want service=x", ps[0].Attributes)
		}
		untrack()
		checkGauge(t, collect(t, r), 3590)
	})
}

// TestGaugeForgetsCollectedSources: a Source dropped without untrack (as a
// token.Map drops the Sources it evicts) is forgotten once collected.
func TestGaugeForgetsCollectedSources(t *testing.T) {
	m, r := newMetrics(t)
	st := tokentest.NewStore()
	func() {
		// Not newSource: its cleanup would keep s alive.
		s, err := token.NewSource("c", tokentest.New(time.Hour), st, st, token.Options{Logger: quiet, Hooks: m.Hooks()})
		must(t, err)
		mustToken(t, s)
		m.Track("c", s)
		if ps := collect(t, r).gauge(tokencacheotel.NameRemainingLifetime); len(ps) != 1 {
			t.Fatalf("tracked: %+v, want one point", ps)
		}
		_ = s.Close()
	}()
	for i := 0; i < 10; i++ {
		runtime.GC()
		if ps := collect(t, r).gauge(tokencacheotel.NameRemainingLifetime); len(ps) == 0 {
			return
		}
	}
	t.Error("a collected Source is still reported")
}

// TestCredentialAttribute: with WithCredentialAttribute every measurement,
// the gauge included, carries the credential's name.
func TestCredentialAttribute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, r := newMetrics(t, tokencacheotel.WithCredentialAttribute())
		st1, st2 := tokentest.NewStore(), tokentest.NewStore()
		upA, upB := tokentest.New(time.Hour), tokentest.New(time.Minute)
		a := newSource(t, "a", upA, st1, st1, m.Hooks())
		b := newSource(t, "b", upB, st2, st2, m.Hooks())
		defer m.Track("a", a)()
		defer m.Track("b", b)()
		mustToken(t, a)
		tok := mustToken(t, b)
		must(t, b.Invalidate(context.Background(), tok.Value))
		use(t, a, b)
		c := collect(t, r)
		checkSums(t, c, []sumWant{
			{tokencacheotel.NameFetches, 1, []string{"tokencache.credential", "a"}},
			{tokencacheotel.NameFetches, 2, []string{"tokencache.credential", "b"}},
			{tokencacheotel.NameInvalidations, 1, []string{"tokencache.credential", "b", "tokencache.invalidation.result", "removed"}},
		})
		checkNoToken(t, c, append(upA.Tokens(), upB.Tokens()...))
		got := map[string]float64{}
		for _, p := range c.gauge(tokencacheotel.NameRemainingLifetime) {
			v, _ := p.Attributes.Value("tokencache.credential")
			got[v.Emit()] = p.Value
		}
		if len(got) != 2 || got["a"] != 3600 || got["b"] != 60 {
			t.Errorf("remaining lifetime per credential: %v, want a:3600 b:60", got)
		}
	})
}

// TestGlobalProviderAndClose: Hooks records on the global MeterProvider by
// default; after Close, Track is a no-op.
func TestGlobalProviderAndClose(t *testing.T) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	defer mp.Shutdown(context.Background())
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(mp)
	defer otel.SetMeterProvider(prev)
	h, err := tokencacheotel.Hooks()
	if err != nil {
		t.Fatal(err)
	}
	st := tokentest.NewStore()
	s := newSource(t, "c", tokentest.New(time.Hour), st, st, h)
	mustToken(t, s)
	if n := collect(t, r).sum(tokencacheotel.NameFetches); n != 1 {
		t.Errorf("fetches on the global provider: %d, want 1", n)
	}
	m, err := tokencacheotel.New()
	if err != nil {
		t.Fatal(err)
	}
	must(t, m.Close())
	m.Track("c", s)()
	if ps := collect(t, r).gauge(tokencacheotel.NameRemainingLifetime); len(ps) != 0 {
		t.Errorf("tracked after Close: %+v", ps)
	}
}

// checkNoToken fails if an attribute value holds one of tokens.
func checkNoToken(t *testing.T, c collected, tokens []string) {
	t.Helper()
	vs := c.values()
	if len(vs) == 0 || len(tokens) == 0 {
		t.Fatal("nothing to check")
	}
	for _, v := range vs {
		for _, tok := range tokens {
			if strings.Contains(v, tok) || strings.Contains(tok, v) && len(v) >= 8 {
				t.Errorf("an attribute holds a token: %q", v)
			}
		}
	}
}
