package rediscache_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/token"
)

// writeFailInstance is one instance of TestWritesFailReadsWork: a Source on
// a client of its own, whose commands and logs it counts.
type writeFailInstance struct {
	src  *token.Source
	cmds counter
	logs syncBuffer
	// recovered is closed by the first caller that gets a valid token after
	// the store was restored.
	recovered chan struct{}
	once      sync.Once
}

// logCounts is what an instance logged and sent over a span of time.
type logCounts struct {
	down, up, warns, lines int
	cmds                   int64
}

func (w *writeFailInstance) counts() (logCounts, int) {
	out := w.logs.String()
	return logCounts{
		down:  countLogs(out, "WARN", "unavailable"),
		up:    countLogs(out, "INFO", "available again"),
		warns: countLogs(out, "WARN", ""),
		cmds:  w.cmds.n.Load(),
	}, len(out)
}

func (w *writeFailInstance) countsSince(offset int) logCounts {
	out := w.logs.String()[offset:]
	return logCounts{
		down:  countLogs(out, "WARN", "unavailable"),
		up:    countLogs(out, "INFO", "available again"),
		warns: countLogs(out, "WARN", ""),
	}
}

// TestWritesFailReadsWork: Redis answers reads but refuses writes (out of
// memory, or a read-only replica). That is one outage: each instance logs it
// once (and its end at most once), and retries the store at a bounded rate,
// not once per caller. Once writes work again, callers get valid tokens
// within a few seconds.
func TestWritesFailReadsWork(t *testing.T) {
	realRedis(t) // runs with the real-Redis tests
	ctx := context.Background()
	for _, tc := range []struct {
		name          string
		fail, restore func(t *testing.T, admin *redis.Client, other *redisProcess)
	}{
		{"OOM", func(t *testing.T, admin *redis.Client, _ *redisProcess) {
			for _, kv := range [][2]string{{"maxmemory-policy", "noeviction"}, {"maxmemory", "1"}} {
				if err := admin.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}, func(t *testing.T, admin *redis.Client, _ *redisProcess) {
			if err := admin.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
				t.Fatal(err)
			}
		}},
		{"READONLY replica", func(t *testing.T, admin *redis.Client, primary *redisProcess) {
			if err := admin.Do(ctx, "REPLICAOF", "127.0.0.1", primary.port).Err(); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, admin *redis.Client, _ *redisProcess) {
			if err := admin.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRedis(t)
			other := startRedis(t) // the primary of the read-only case
			admin := newClient(t, r.addr())
			const lifetime = 300 * time.Millisecond
			up := newUpstream(lifetime)
			p := prefix(t)
			var insts []*writeFailInstance
			for range 3 {
				w := &writeFailInstance{recovered: make(chan struct{})}
				rdb := newClient(t, r.addr())
				rdb.AddHook(&w.cmds)
				o := testOptions(p)
				o.Source.Logger = jsonLogger(&w.logs)
				src := source(t, rdb, o, up)
				w.src = src
				insts = append(insts, w)
			}

			// 8 callers per instance until stop. After restored is set,
			// the first valid token on an instance closes its recovered.
			stop := make(chan struct{})
			var restored atomic.Bool
			var calls, errs [3]atomic.Int64
			var wg sync.WaitGroup
			for i, w := range insts {
				for range 8 {
					wg.Go(func() {
						for {
							select {
							case <-stop:
								return
							default:
							}
							cctx, cancel := context.WithTimeout(ctx, time.Second)
							after := restored.Load()
							tok, err := w.src.Token(cctx)
							cancel()
							calls[i].Add(1)
							if err != nil {
								errs[i].Add(1)
							} else if after && up.Valid(tok.Value) {
								w.once.Do(func() { close(w.recovered) })
							}
							time.Sleep(think()) // a caller's pace
						}
					})
				}
			}
			stopped := false
			stopLoad := func() {
				if !stopped {
					stopped = true
					close(stop)
					wg.Wait()
				}
			}
			defer stopLoad()

			// Warm up: every instance serves a token, for two lifetimes.
			for _, w := range insts {
				if tok, err := w.src.Token(ctx); err != nil || !up.Valid(tok.Value) {
					t.Fatalf("warm-up: Token = %v, %v", tok, err)
				}
			}
			time.Sleep(2 * lifetime) // steady load before the fault

			const failFor = 2 * time.Second
			var before [3]logCounts
			var offsets [3]int
			for i, w := range insts {
				before[i], offsets[i] = w.counts()
			}
			tc.fail(t, admin, other)
			failStart := time.Now()
			time.Sleep(failFor) // the fault lasts this long under load
			var during [3]logCounts
			for i, w := range insts {
				during[i] = w.countsSince(offsets[i])
				during[i].cmds = w.cmds.n.Load() - before[i].cmds
			}
			failed := time.Since(failStart)
			restored.Store(true)
			tc.restore(t, admin, other)
			restoreAt := time.Now()

			const recoverWithin = 3 * time.Second
			timeout := time.After(recoverWithin)
			var recoveredIn [3]time.Duration
			for i, w := range insts {
				select {
				case <-w.recovered:
					recoveredIn[i] = time.Since(restoreAt)
				case <-timeout:
					recoveredIn[i] = -1
				}
			}
			// Keep the load on for about 2 s after the restore.
			if rest := 2*time.Second - time.Since(restoreAt); rest > 0 {
				time.Sleep(rest) // on purpose: load after the restore
			}
			stopLoad()

			for i, w := range insts {
				total, _ := w.counts()
				d := during[i]
				rate := float64(d.cmds) / failed.Seconds()
				t.Logf("instance %d during the %v fault: %d \"unavailable\" WARN, %d \"available again\" INFO, %d WARN lines in all, %d commands (%.0f/s)",
					i, failed.Round(time.Millisecond), d.down, d.up, d.warns, d.cmds, rate)
				t.Logf("instance %d overall: %d \"unavailable\" WARN, %d \"available again\" INFO, %d WARN lines in all, %d commands; %d calls, %d errors; valid token %v after the restore",
					i, total.down, total.up, total.warns, total.cmds, calls[i].Load(), errs[i].Load(), recoveredIn[i].Round(time.Millisecond))
				if d.down > 1 {
					t.Errorf("instance %d logged the outage %d times, want at most once", i, d.down)
				}
				if d.up > 1 {
					t.Errorf("instance %d logged the store available again %d times during the outage, want at most once", i, d.up)
				}
				if rate > 20 {
					t.Errorf("instance %d sent %.0f commands/s during the outage, want at most 20", i, rate)
				}
				if recoveredIn[i] < 0 {
					t.Errorf("instance %d: no valid token within %v of the restore", i, recoverWithin)
				}
			}
			t.Logf("upstream issued %d tokens", up.Issued())
		})
	}
}
