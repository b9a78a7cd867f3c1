package tokencacheotel_test

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	tokencacheotel "github.com/tokencache/tokencache/extra/otel"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// BenchmarkRefresh is one refresh on the in-memory store (invalidate, then
// a Token call that fetches and saves), as token's BenchmarkRefresh: without
// hooks, with this package's hooks on the OTel SDK, and with the credential
// attribute too.
func BenchmarkRefresh(b *testing.B) {
	for _, bc := range []struct {
		name string
		opts []tokencacheotel.Option // nil: no hooks
	}{
		{"hooks=none", nil},
		{"hooks=otel", []tokencacheotel.Option{}},
		{"hooks=otel+credential", []tokencacheotel.Option{tokencacheotel.WithCredentialAttribute()}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var hooks token.Hooks
			if bc.opts != nil {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				defer mp.Shutdown(context.Background())
				m, err := tokencacheotel.New(append(bc.opts, tokencacheotel.WithMeterProvider(mp))...)
				if err != nil {
					b.Fatal(err)
				}
				hooks = m.Hooks()
			}
			benchRefresh(b, hooks)
		})
	}
}

func benchRefresh(b *testing.B, hooks token.Hooks) {
	st := tokentest.NewStore()
	s, err := token.NewSource("c", tokentest.New(time.Hour), st, st, token.Options{Logger: quiet, Hooks: hooks})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	tok, err := s.Token(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		// Lifts the cap on fetches per lifetime, the same in every run.
		if err := s.ResetBackoff(ctx); err != nil {
			b.Fatal(err)
		}
		if err := s.Invalidate(ctx, tok.Value); err != nil {
			b.Fatal(err)
		}
		if tok, err = s.Token(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
