package rediscache_test

import (
	"context"
	"net"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokencache/tokencache/internal/scenario"
)

// redisProcess is a redis-server the test starts, stops and restarts itself.
type redisProcess struct {
	t     *testing.T
	port  int
	extra []string // more redis-server arguments
	cmd   *exec.Cmd
}

// startRedis starts a private redis-server on a free loopback port, with
// the extra arguments, stopped when the test ends.
func startRedis(t *testing.T, extra ...string) *redisProcess {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("needs redis-server on PATH")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := &redisProcess{t: t, port: port, extra: extra}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *redisProcess) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

func (r *redisProcess) start() {
	r.t.Helper()
	args := []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(r.port),
		"--save", "", "--appendonly", "no", "--dir", r.t.TempDir()}
	r.cmd = exec.Command("redis-server", append(args, r.extra...)...)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: r.addr()})
	defer c.Close()
	if !scenario.Retry(10*time.Second, 10*time.Millisecond, func() bool { // polling the server's start
		return c.Ping(context.Background()).Err() == nil
	}) {
		r.t.Fatal("redis-server did not start")
	}
}

func (r *redisProcess) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
}

// TestProcessFaults runs 3 OS processes × 16 goroutines against a Redis of the
// test's own and an upstream over HTTP, and injects one fault per subtest in
// the middle of the run. Each fault costs at most one extra fetch and no
// caller error, and no process keeps serving a dead token.
func TestProcessFaults(t *testing.T) {
	realRedis(t) // runs with the real-Redis tests
	ctx := context.Background()
	restart := func(t *testing.T, r *redisProcess, admin *redis.Client) {
		_ = admin.ShutdownNoSave(ctx).Err() // the connection drops: no reply
		_ = r.cmd.Wait()
		r.cmd = nil
		r.start()
	}
	for _, fault := range []struct {
		name    string
		inject  func(t *testing.T, r *redisProcess, admin *redis.Client)
		lockTTL time.Duration // 0: default Options
	}{
		{"restart without data", restart, time.Second},
		{"restart without data, default Options", restart, 0},
		{"FLUSHALL", func(t *testing.T, r *redisProcess, admin *redis.Client) {
			if err := admin.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}, time.Second},
		{"pubsub connections killed", func(t *testing.T, r *redisProcess, admin *redis.Client) {
			n, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
			if err != nil || n == 0 {
				t.Fatalf("CLIENT KILL TYPE pubsub: %d, %v", n, err)
			}
		}, time.Second},
	} {
		t.Run(fault.name, func(t *testing.T) {
			r := startRedis(t)
			admin := newClient(t, r.addr())
			const lifetime = 2 * time.Second
			up := newUpstream(lifetime)
			srv := httptest.NewServer(up)
			defer srv.Close()
			p := prefix(t)
			d := 7 * time.Second
			start := time.Now()
			var injected time.Time
			reps := runChildren(t, ctx, 3, p, srv.URL, fault.lockTTL, func() {
				time.Sleep(lifetime + lifetime/4) // into the second token's life, on purpose
				injected = time.Now()
				fault.inject(t, r, admin)
			}, childDuration+"="+d.String(), childWorkers+"=16", realRedisEnv+"="+r.addr())

			var errs int64
			var maxStale time.Duration
			first := map[string]time.Time{}
			for _, rep := range reps {
				errs += rep.Errors
				for v, last := range rep.LastSeen {
					if end, ok := up.ValidUntil(v); ok {
						maxStale = max(maxStale, time.Unix(0, last).Sub(end))
					}
					// The last child to start serving a token.
					if f := time.Unix(0, rep.FirstSeen[v]); f.After(first[v]) {
						first[v] = f
					}
				}
			}
			elapsed := time.Since(start)
			// Time from the first token issued after the fault until the
			// last process served it.
			recovery := time.Duration(-1)
			times, values := up.IssueTimes(), up.Tokens()
			for i, at := range times {
				if at.After(injected) {
					if f, ok := first[values[i]]; ok {
						recovery = f.Sub(at)
					}
					break
				}
			}
			ideal := 1 + int(elapsed/(lifetime*8/10))
			t.Logf("%s: upstream issued %d (ideal %d), caller errors %d, dead token served up to %v late, next token on every process %v after its fetch",
				fault.name, up.Issued(), ideal, errs, max(0, maxStale), recovery.Round(time.Millisecond))
			if up.Issued() > ideal+1 {
				t.Errorf("the fault cost %d extra fetches", up.Issued()-ideal)
			}
			// A notification lost with the restart is made up by the
			// next poll: PollInterval (20 ms in the test options, 250 ms
			// by default), plus scheduling.
			bound := 100 * time.Millisecond
			if fault.lockTTL == 0 {
				bound = 250*time.Millisecond + 100*time.Millisecond
			}
			if maxStale > bound {
				t.Errorf("a process served a dead token %v late (bound %v)", maxStale, bound)
			}
		})
	}
}
