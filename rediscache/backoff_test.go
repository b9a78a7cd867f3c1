package rediscache_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
)

// permanentErr is an upstream error that retrying cannot fix.
type permanentErr struct{}

func (permanentErr) Error() string   { return "invalid appsecret" }
func (permanentErr) Permanent() bool { return true }

// TestDeadUpstreamIsBackedOffClusterWide: 8 instances × 64 goroutines ask for
// a token from an upstream that always fails. The backoff is shared through
// Redis, so the whole cluster calls the upstream a handful of times.
func TestDeadUpstreamIsBackedOffClusterWide(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		for _, tc := range []struct {
			name     string
			err      error
			most     int
			duration time.Duration
		}{
			// Default backoff: 1s, 2s, 4s (±20%): at most 4 calls in 6s.
			{"temporary", errors.New("HTTP status 503"), 4, 6 * time.Second},
			// 10 minutes after an error retrying cannot fix.
			{"permanent", permanentErr{}, 1, 2 * time.Second},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var calls atomic.Int64
				dead := token.FetcherFunc(func(context.Context) (token.Token, error) {
					calls.Add(1)
					return token.Token{}, tc.err
				})
				o := testOptions(prefix(t))
				o.Source.BackoffPolicy = nil // the default policy
				srcs := instances(t, b, 8, dead, o)
				ctx, cancel := context.WithTimeout(context.Background(), tc.duration)
				defer cancel()
				var errs, backoffs atomic.Int64
				var wg sync.WaitGroup
				for _, s := range srcs {
					for range 64 {
						wg.Go(func() {
							for ctx.Err() == nil {
								_, err := s.Token(ctx)
								if err == nil {
									t.Error("a dead upstream gave a token")
									return
								}
								errs.Add(1)
								if errors.Is(err, token.ErrUpstreamBackoff) {
									backoffs.Add(1)
								}
								time.Sleep(time.Millisecond) // a caller retrying
							}
						})
					}
				}
				wg.Wait()
				t.Logf("%s: %d upstream calls from 8 instances × 64 goroutines over %v; %d caller errors, %d of them backoff errors",
					tc.name, calls.Load(), tc.duration, errs.Load(), backoffs.Load())
				if n := calls.Load(); n < 1 || n > int64(tc.most) {
					t.Errorf("%d upstream calls, want 1 to %d", n, tc.most)
				}
			})
		}
	})
}
