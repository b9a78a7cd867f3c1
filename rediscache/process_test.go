package rediscache_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// The test binary re-executes itself as instances of a service: childEnv
// selects what the child does, the others configure it.
const (
	childEnv       = "TOKENCACHE_TEST_CHILD" // "load" or "refresh"
	childPrefix    = "TOKENCACHE_TEST_PREFIX"
	childUpstream  = "TOKENCACHE_TEST_UPSTREAM"
	childDuration  = "TOKENCACHE_TEST_DURATION"
	childWorkers   = "TOKENCACHE_TEST_GOROUTINES"
	childLockTTLMS = "TOKENCACHE_TEST_LOCK_TTL_MS"
	childDB        = "TOKENCACHE_TEST_DB"   // Redis DB number, default 0
	childName      = "TOKENCACHE_TEST_NAME" // credential name, default "c"
)

// childReport is what a "load" child prints as its last line.
type childReport struct {
	Calls, Errors int64
	FirstErr      string
	// LastSeen maps each token the child handed out to the last time it did
	// (Unix nanoseconds; all processes share one clock).
	LastSeen map[string]int64
	// FirstSeen maps each token to the first time the child handed it out.
	FirstSeen map[string]int64
}

// processOptions are the test options with lockTTL, or the defaults (with
// prefix p and a quiet logger) if lockTTL is 0.
func processOptions(p string, lockTTL time.Duration) rediscache.Options {
	if lockTTL == 0 {
		return rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}}
	}
	o := testOptions(p)
	o.LockTTL = lockTTL
	return o
}

func childMain() int {
	if os.Getenv(childEnv) == "push" {
		return pushChild()
	}
	ctx := context.Background()
	ttl, _ := strconv.Atoi(os.Getenv(childLockTTLMS))
	o := processOptions(os.Getenv(childPrefix), time.Duration(ttl)*time.Millisecond)
	db, _ := strconv.Atoi(os.Getenv(childDB))
	name := os.Getenv(childName)
	if name == "" {
		name = "c"
	}
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(realRedisEnv), DB: db})
	defer rdb.Close()
	src, err := rediscache.NewSource(rdb, name, tokentest.HTTPFetcher(os.Getenv(childUpstream), nil), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer src.Close()
	switch os.Getenv(childEnv) {
	case "refresh":
		// Fetch once; the parent kills us while the fetch is blocked.
		fmt.Println("started")
		_, err := src.Token(ctx)
		fmt.Println("returned", err)
		return 0
	case "load":
		d, _ := time.ParseDuration(os.Getenv(childDuration))
		g, _ := strconv.Atoi(os.Getenv(childWorkers))
		rep := childReport{LastSeen: map[string]int64{}, FirstSeen: map[string]int64{}}
		var mu sync.Mutex
		var wg sync.WaitGroup
		lctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		for range g {
			wg.Go(func() {
				seen, firstSeen := map[string]int64{}, map[string]int64{}
				var calls, errs int64
				var first error
				for lctx.Err() == nil {
					tok, err := src.Token(lctx)
					calls++
					if err != nil {
						if lctx.Err() == nil {
							errs++
							first = cmp(first, err)
						}
						continue
					}
					now := time.Now().UnixNano()
					seen[tok.Value] = now
					if _, ok := firstSeen[tok.Value]; !ok {
						firstSeen[tok.Value] = now
					}
					time.Sleep(200 * time.Microsecond) // a caller's work with the token
				}
				mu.Lock()
				defer mu.Unlock()
				rep.Calls += calls
				rep.Errors += errs
				if first != nil && rep.FirstErr == "" {
					rep.FirstErr = first.Error()
				}
				for k, v := range seen {
					rep.LastSeen[k] = max(rep.LastSeen[k], v)
				}
				for k, v := range firstSeen {
					if f, ok := rep.FirstSeen[k]; !ok || v < f {
						rep.FirstSeen[k] = v
					}
				}
			})
		}
		wg.Wait()
		_ = json.NewEncoder(os.Stdout).Encode(rep)
		return 0
	}
	return 2
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// child starts this test binary as an instance.
func child(t *testing.T, ctx context.Context, mode, p, upstream string, lockTTL time.Duration, extra ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childEnv+"="+mode, childPrefix+"="+p, childUpstream+"="+upstream,
		childLockTTLMS+"="+strconv.FormatInt(lockTTL.Milliseconds(), 10))
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stderr = os.Stderr
	return cmd
}

// runChildren runs n load children, calls during while they run, and
// returns their reports once they end.
func runChildren(t *testing.T, ctx context.Context, n int, p, upstream string, lockTTL time.Duration, during func(), extra ...string) []childReport {
	t.Helper()
	var cmds []*exec.Cmd
	var outs []*bufio.Reader
	for range n {
		cmd := child(t, ctx, "load", p, upstream, lockTTL, extra...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, bufio.NewReader(out))
	}
	if during != nil {
		during()
	}
	reps := make([]childReport, n)
	for i, cmd := range cmds {
		if err := json.NewDecoder(outs[i]).Decode(&reps[i]); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		if reps[i].Errors > 0 {
			t.Errorf("child %d: %d errors, first: %s", i, reps[i].Errors, reps[i].FirstErr)
		}
	}
	return reps
}

// TestProcessesShareOneToken runs 4 OS processes × 32 goroutines against a
// real Redis and an upstream served over HTTP, over 10 lifetimes.
func TestProcessesShareOneToken(t *testing.T) {
	realRedis(t) // the children read it from the environment
	const lifetime = 600 * time.Millisecond
	up := newUpstream(lifetime)
	srv := httptest.NewServer(up)
	defer srv.Close()
	p := prefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := 10 * lifetime
	start := time.Now()
	reps := runChildren(t, ctx, 4, p, srv.URL, 2*time.Second, nil, childDuration+"="+d.String(), childWorkers+"=32")
	var total childReport
	var maxStale time.Duration
	stale := 0
	for i, rep := range reps {
		total.Calls += rep.Calls
		total.Errors += rep.Errors
		for v, last := range rep.LastSeen {
			end, ok := up.ValidUntil(v)
			if !ok {
				t.Errorf("child %d handed out a token the upstream never issued", i)
				continue
			}
			if late := time.Unix(0, last).Sub(end); late > 0 {
				stale++
				maxStale = max(maxStale, late)
			}
		}
	}
	elapsed := time.Since(start)
	t.Logf("4 processes: %d calls, %d errors, upstream issued %d over %v; %d tokens handed out after they died, at most %v late",
		total.Calls, total.Errors, up.Issued(), elapsed.Round(time.Millisecond), stale, maxStale)
	times := up.IssueTimes()
	minGap := time.Duration(float64(lifetime)*0.8) - lifetime/10
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < minGap {
			t.Errorf("token %d issued %v after the previous one; want at least %v", i, gap, minGap)
		}
	}
	// The children ran for d each, starting within the elapsed time.
	if n, most := up.Issued(), int(elapsed/time.Duration(float64(lifetime)*0.8))+1; n > most || n < int(d/lifetime) {
		t.Errorf("upstream issued %d tokens; want between %d and %d", n, int(d/lifetime), most)
	}
	if maxStale > 100*time.Millisecond {
		t.Errorf("a process handed out a token %v after it died", maxStale)
	}
}

// TestKilledRefresher: the process holding the lock is killed (SIGKILL) in
// the middle of its fetch. Another instance completes the refresh within the
// lock TTL plus one fetch, and the upstream issues one token.
func TestKilledRefresher(t *testing.T) {
	addr := realRedis(t)
	up := newUpstream(time.Hour)
	srv := httptest.NewServer(up)
	defer srv.Close()
	p := prefix(t)
	const lockTTL = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	entered, release := up.Hold()
	defer release()
	cmd := child(t, ctx, "refresh", p, srv.URL, lockTTL)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the child never fetched")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_ = cmd.Wait()
	// The killed fetch ends when the server sees the connection close;
	// only then may the upstream answer again.
	if !scenario.Retry(10*time.Second, time.Millisecond, func() bool { return up.InFlight() == 0 }) { // polling the server's state
		t.Fatal("the killed fetch never ended")
	}
	release()

	o := processOptions(p, lockTTL)
	src := source(t, newClient(t, addr), o, tokentest.HTTPFetcher(srv.URL, nil))
	tok, err := src.Token(ctx)
	recovered := time.Since(killed)
	if err != nil || !up.Valid(tok.Value) {
		t.Fatalf("Token = %v, %v", tok, err)
	}
	t.Logf("recovered %v after the kill (lock TTL %v); upstream calls %d, issued %d", recovered, lockTTL, up.Calls(), up.Issued())
	if bound := lockTTL + time.Second; recovered > bound {
		t.Errorf("recovery took %v, want under %v", recovered, bound)
	}
	if up.Issued() != 1 {
		t.Errorf("upstream issued %d tokens, want 1 (the killed fetch never completed)", up.Issued())
	}
}
