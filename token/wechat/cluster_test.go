package wechat_test

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/token/wechat/wechattest"
)

// raceEnabled is set under the race detector.
var raceEnabled bool

// TestClusterSharesOneAccessToken is the WeChat claim: 8 instances × 64
// goroutines call the API through the Transport for 10 token lifetimes, with
// classic access_tokens. The cluster fetches one token per lifetime; in grace
// mode no call is ever rejected; in strict mode the rejections that the
// notification window causes are all recovered by the Transport.
func TestClusterSharesOneAccessToken(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		for _, strict := range []bool{false, true} {
			mode := map[bool]string{false: "grace", true: "strict"}[strict]
			t.Run(mode, func(t *testing.T) {
				const lifetime = time.Second
				srv := wechattest.NewServer(wechattest.Options{
					Lifetime: lifetime, Strict: strict, Grace: 300 * time.Millisecond, DailyQuota: -1,
				})
				defer srv.Close()
				var logs logBuffer
				o := options(redistest.Prefix(t), &logs)
				var clients []*http.Client
				for range 8 {
					clients = append(clients, apiClient(source(t, b, o, "wechat:wx1", classic(srv))))
				}
				const d = 10 * lifetime
				ctx, cancel := context.WithTimeout(context.Background(), d)
				defer cancel()
				think := 50 * time.Millisecond // the caller's own work between calls
				if raceEnabled {
					think = 250 * time.Millisecond
				}
				var calls, failed atomic.Int64
				var wg sync.WaitGroup
				start := time.Now()
				for _, hc := range clients {
					for range 64 {
						wg.Go(func() {
							for ctx.Err() == nil {
								code, _, err := apiCall(context.Background(), hc, srv.URL, "")
								calls.Add(1)
								if err != nil || code != 0 {
									if failed.Add(1) < 5 {
										t.Logf("call failed: %d %v", code, err)
									}
								}
								time.Sleep(think)
							}
						})
					}
				}
				wg.Wait()
				elapsed := time.Since(start)
				fetches := srv.Count(wechattest.EndpointToken)
				replaced := srv.Count(wechattest.EndpointAPI40001)
				expired := srv.Count(wechattest.EndpointAPI42001)
				t.Logf("%s: %d API calls over %v, %d failed for the caller; %d token fetches; attempts rejected and retried: %d with 40001, %d with 42001",
					mode, calls.Load(), elapsed.Round(time.Millisecond), failed.Load(), fetches, replaced, expired)
				if failed.Load() > 0 {
					t.Errorf("%d calls failed", failed.Load())
				}
				// One fetch, then one per lifetime less the refresh-ahead
				// window (0.2). Fewer (and 42001s) mean refreshes ran late
				// on a starved CPU; more would be duplicate fetches.
				ideal := 1 + int(elapsed/(lifetime*8/10))
				if fetches > ideal+1 {
					t.Errorf("token fetches = %d, want at most %d", fetches, ideal+1)
				}
				if fetches < ideal-1 {
					t.Logf("only %d of %d fetches: refreshes ran late (CPU starved?)", fetches, ideal)
				}
				if !strict && replaced > 0 {
					t.Errorf("%d calls rejected with 40001 in grace mode", replaced)
				}
				noSecret(t, "the logs", logs.String())
			})
		}
	})
}
