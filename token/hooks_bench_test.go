package token_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// BenchmarkRefresh is one refresh on the in-memory store (invalidate, then
// a Token call that fetches and saves), without hooks and with every hook
// set (doing nothing): what the hooks cost on the refresh path.
func BenchmarkRefresh(b *testing.B) {
	nop := token.Hooks{
		FetchStart:  func(token.FetchStartInfo) {},
		FetchDone:   func(token.FetchDoneInfo) {},
		WaitDone:    func(token.WaitDoneInfo) {},
		Invalidated: func(token.InvalidateInfo) {},
		StoreError:  func(token.StoreErrorInfo) {},
		Backoff:     func(token.BackoffInfo) {},
		LockLost:    func(token.LockLostInfo) {},
	}
	for _, bc := range []struct {
		name  string
		hooks token.Hooks
	}{{"hooks=none", token.Hooks{}}, {"hooks=all", nop}} {
		b.Run(bc.name, func(b *testing.B) {
			st := tokentest.NewStore()
			s, err := token.NewSource("c", tokentest.New(time.Hour), st, st, token.Options{Logger: quiet, Hooks: bc.hooks})
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
				// Lifts the cap on fetches per lifetime, which a
				// benchmark reaches at once; the same in both runs.
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
		})
	}
}
