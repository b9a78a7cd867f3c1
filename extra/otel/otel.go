package tokencacheotel

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tokencache/tokencache/token"
)

// ScopeName is the instrumentation scope of the instruments.
const ScopeName = "github.com/tokencache/tokencache/extra/otel"

// An Option configures New and Hooks.
type Option func(*config)

type config struct {
	provider metric.MeterProvider
	attrs    []attribute.KeyValue
	withCred bool
}

// WithMeterProvider records on mp instead of the global MeterProvider
// (otel.GetMeterProvider at the time of New).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.provider = mp }
}

// WithAttributes adds attrs to every measurement, e.g. to tell apart the
// Caches of one process.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return func(c *config) { c.attrs = append(c.attrs, attrs...) }
}

// WithCredentialAttribute adds the credential's name (the name given to
// token.NewSource or rediscache's Cache.Source) to every measurement as
// tokencache.credential. Off by default: one series per credential is
// high cardinality with a token.Map of many keys.
func WithCredentialAttribute() Option {
	return func(c *config) { c.withCred = true }
}

// Metrics records what Sources do on OpenTelemetry instruments: put its
// Hooks in token.Options.Hooks (or rediscache.Options.Source.Hooks, once
// per Cache), and Track the Sources whose token lifetime to report. Use it
// from any number of goroutines. Make one with New.
type Metrics struct {
	cfg   config
	inst  instruments
	attrs attrCache
	gauge gauge
}

// New makes the instruments on the configured MeterProvider. It returns an
// error if the provider refuses one of them.
func New(opts ...Option) (*Metrics, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.provider == nil {
		cfg.provider = otel.GetMeterProvider()
	}
	m := &Metrics{cfg: cfg}
	meter := cfg.provider.Meter(ScopeName)
	if err := m.inst.init(meter); err != nil {
		return nil, fmt.Errorf("tokencacheotel: %w", err)
	}
	m.attrs.init(cfg.attrs, cfg.withCred)
	m.gauge.init(meter, m.inst.remaining, &m.attrs)
	return m, nil
}

// Hooks is New(opts...).Hooks(), for a service that does not report token
// lifetimes.
func Hooks(opts ...Option) (token.Hooks, error) {
	m, err := New(opts...)
	if err != nil {
		return token.Hooks{}, err
	}
	return m.Hooks(), nil
}

// Close stops reporting tokencache.token.remaining_lifetime and forgets the
// tracked Sources. The hooks keep recording.
func (m *Metrics) Close() error {
	return m.gauge.close()
}

// Hooks returns the hooks that record on m's instruments. They only look up
// precomputed attribute sets and add to instruments: no I/O, no lock held
// for longer than a map read, no allocation once a combination was seen.
func (m *Metrics) Hooks() token.Hooks {
	// Hooks carry no context; measurements need none.
	ctx := context.Background()
	in, a := &m.inst, &m.attrs
	return token.Hooks{
		FetchDone: func(i token.FetchDoneInfo) {
			k := key{kind: kindFetch, reason: i.Reason, outcome: i.Outcome, class: i.Class}
			in.fetches.Add(ctx, 1, a.get(i.Credential, k).add...)
			k.kind, k.reason = kindFetchDuration, 0
			in.fetchDuration.Record(ctx, i.Duration.Seconds(), a.get(i.Credential, k).rec...)
		},
		WaitDone: func(i token.WaitDoneInfo) {
			k := key{kind: kindWait, outcome: i.Outcome}
			in.waitDuration.Record(ctx, i.Duration.Seconds(), a.get(i.Credential, k).rec...)
		},
		Invalidated: func(i token.InvalidateInfo) {
			k := key{kind: kindInvalidation, outcome: resultStale}
			if i.Removed {
				k.outcome = resultRemoved
			}
			in.invalidations.Add(ctx, 1, a.get(i.Credential, k).add...)
		},
		StoreError: func(i token.StoreErrorInfo) {
			in.storeErrors.Add(ctx, 1, a.get(i.Credential, key{kind: kindStore, outcome: i.Op}).add...)
		},
		Backoff: func(i token.BackoffInfo) {
			// +1 and -1 with the same attributes (no class: the end of a
			// backoff has none), so that the sum stays consistent.
			n := int64(-1)
			if i.Active {
				n = 1
			}
			in.backoffActive.Add(ctx, n, a.get(i.Credential, key{kind: kindPlain}).add...)
		},
		LockLost: func(i token.LockLostInfo) {
			in.lockLosses.Add(ctx, 1, a.get(i.Credential, key{kind: kindPlain}).add...)
		},
	}
}

// Track reports src's remaining token lifetime on
// tokencache.token.remaining_lifetime under name, the credential's name as
// given to token.NewSource, until untrack is called or src is garbage
// collected: m holds src weakly, so Sources that a token.Map evicts and
// drops need no untrack. Tracking a Source does no I/O and takes none of
// its locks: the gauge reads Source.Cached when collected.
func (m *Metrics) Track(name string, src *token.Source) (untrack func()) {
	return m.gauge.track(name, src)
}
