package rediscache_test

import (
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/scenario"
)

// TestDeadUpstreamIsBackedOffClusterWide: 8 instances × 64 goroutines ask for
// a token from an upstream that always fails. The backoff is shared through
// Redis, so the whole cluster calls the upstream a handful of times.
func TestDeadUpstreamIsBackedOffClusterWide(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		for _, up := range scenario.DeadUpstreams {
			t.Run(up.Name, func(t *testing.T) {
				be := redisBackend(t, b, testOptions(prefix(t)))
				be.Think = time.Millisecond // a caller retrying
				scenario.DeadUpstreamIsBackedOff(t, be, up, 64)
			})
		}
	})
}
