package rediscache_test

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// silentServer accepts TCP connections and never answers, like a Redis that
// hangs. Connections stay open until unblock or the test's cleanup.
type silentServer struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  bool
	wg    sync.WaitGroup
}

func newSilentServer(t *testing.T) *silentServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silentServer{l: l}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.done {
				c.Close()
			} else {
				s.conns = append(s.conns, c)
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *silentServer) addr() string { return s.l.Addr().String() }

// close stops accepting (new dials are refused) and closes every connection,
// so that whatever reads from them returns.
func (s *silentServer) close() {
	s.l.Close()
	s.mu.Lock()
	s.done = true
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

// timed runs fn, reports its duration, and fails the test if it takes longer
// than bound. If fn is still blocked after giveUp, the test fails, calls
// unblock (if any) and waits for fn to return.
func timed(t *testing.T, what string, bound, giveUp time.Duration, unblock func(), fn func()) time.Duration {
	t.Helper()
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		fn()
	}()
	timer := time.NewTimer(giveUp)
	defer timer.Stop()
	select {
	case <-done:
		took := time.Since(start)
		t.Logf("%s took %v", what, took.Round(time.Millisecond))
		if took > bound {
			t.Errorf("%s took %v; want at most %v", what, took.Round(time.Millisecond), bound)
		}
		return took
	case <-timer.C:
	}
	t.Errorf("%s still blocked after %v; want at most %v", what, giveUp, bound)
	if unblock != nil {
		unblock()
	}
	<-done
	took := time.Since(start)
	t.Logf("%s returned %v after it started (unblocked after %v)", what, took.Round(time.Millisecond), giveUp)
	return took
}

// startDebugRedis is startRedis with DEBUG allowed from loopback (Redis 7
// refuses it by default).
func startDebugRedis(t *testing.T) *redisProcess {
	t.Helper()
	if out, _ := exec.Command("redis-server", "--version").Output(); len(out) > 0 && !startsWithV6OrOlder(string(out)) {
		return startRedis(t, "--enable-debug-command", "local")
	}
	return startRedis(t)
}

// startsWithV6OrOlder reports whether redis-server --version output names a
// version before 7, which has no enable-debug-command option.
func startsWithV6OrOlder(version string) bool {
	_, v, ok := strings.Cut(version, "v=")
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	return ok && err == nil && n < 7
}

// closeBound is how long Close may block on an unresponsive Redis: Close
// gives up after about a second (token.Source's closeWait), plus slack.
const closeBound = 1500 * time.Millisecond

// TestUnresponsiveRedisDoesNotBlock: NewSource and Close do not wait on Redis
// I/O without bound, and Token honours its context, whether the server
// accepts connections and never answers or is busy (DEBUG SLEEP).
func TestUnresponsiveRedisDoesNotBlock(t *testing.T) {
	realRedis(t) // runs with the real-Redis tests

	t.Run("silent server", func(t *testing.T) {
		srv := newSilentServer(t)
		rdb := redis.NewClient(&redis.Options{Addr: srv.addr()}) // default options
		t.Cleanup(func() { _ = rdb.Close() })
		up := newUpstream(time.Hour)

		var src *token.Source
		var err error
		timed(t, "NewSource", time.Second, 6*time.Second, srv.close, func() {
			src, err = rediscache.NewSource(rdb, "c", up, testOptions(prefix(t)))
		})
		if err != nil {
			t.Fatalf("NewSource: %v", err)
		}
		closed := false
		defer func() {
			if !closed {
				srv.close()
				_ = src.Close()
			}
		}()

		var tokErr error
		timed(t, "Token with a 300ms context", 1500*time.Millisecond, 4*time.Second, srv.close, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, tokErr = src.Token(ctx)
		})
		if tokErr == nil {
			t.Errorf("Token from a server that never answers: no error")
		} else {
			t.Logf("Token: %v", tokErr)
		}

		timed(t, "Close", closeBound, 4*time.Second, srv.close, func() { _ = src.Close() })
		closed = true
		if up.Calls() != 0 {
			t.Errorf("upstream calls = %d with no Redis, want 0", up.Calls())
		}
	})

	t.Run("DEBUG SLEEP", func(t *testing.T) {
		r := startDebugRedis(t)
		ctx := context.Background()
		// The pinger connects first, and honours its context's deadline
		// (go-redis ignores it by default).
		pinger := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1, PoolSize: 1, ContextTimeoutEnabled: true})
		defer pinger.Close()
		if err := pinger.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		sleeper := redis.NewClient(&redis.Options{Addr: r.addr(), ReadTimeout: 10 * time.Second, MaxRetries: -1})
		t.Cleanup(func() { _ = sleeper.Close() })
		slept := make(chan error, 1)
		go func() { slept <- sleeper.Do(ctx, "DEBUG", "SLEEP", "4").Err() }()
		defer func() {
			if err := <-slept; err != nil {
				t.Errorf("DEBUG SLEEP 4: %v", err)
			}
		}()

		// Wait until the server is asleep: a PING with a short deadline
		// times out.
		asleep := false
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
			select {
			case err := <-slept:
				slept <- err // for the deferred check
				t.Fatalf("DEBUG SLEEP 4 returned at once: %v", err)
			default:
			}
			pctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			err := pinger.Ping(pctx).Err()
			cancel()
			if err != nil {
				var ne net.Error
				if !errors.Is(err, context.DeadlineExceeded) && (!errors.As(err, &ne) || !ne.Timeout()) {
					t.Fatalf("PING: %v", err)
				}
				asleep = true
				break
			}
		}
		if !asleep {
			t.Fatal("the server never went to sleep")
		}

		rdb := redis.NewClient(&redis.Options{Addr: r.addr()}) // default options
		defer rdb.Close()
		up := newUpstream(time.Hour)
		var src *token.Source
		var err error
		timed(t, "NewSource during DEBUG SLEEP", time.Second, 8*time.Second, nil, func() {
			src, err = rediscache.NewSource(rdb, "c", up, testOptions(prefix(t)))
		})
		if err != nil {
			t.Fatalf("NewSource: %v", err)
		}
		timed(t, "Close during DEBUG SLEEP", closeBound, 8*time.Second, nil, func() { _ = src.Close() })
	})
}
