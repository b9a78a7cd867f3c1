package rediscache_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token/tokentest"
)

// hugeVersion is a version no store will issue for a long time.
const hugeVersion = "4611686018427387904"

// countLogs counts the lines of a jsonLogger's output at level whose message
// contains substr.
var countLogs = scenario.CountLogs

// waitSubs waits until the channels have at least n subscribers in all.
func waitSubs(t *testing.T, rdb redis.UniversalClient, n int64, channels ...string) {
	t.Helper()
	var subs int64
	if !scenario.Retry(5*time.Second, time.Millisecond, func() bool { // polling server state
		subs = 0
		for _, ch := range channels {
			m, err := numSub(context.Background(), rdb, ch)
			if err != nil {
				t.Fatal(err)
			}
			subs += m
		}
		return subs >= n
	}) {
		t.Fatalf("%d subscribers of %v, want %d", subs, channels, n)
	}
}

// storedVersion reads the version of the raw token value under key
// ("1|<version>|<lifetime ms>|<token>").
func storedVersion(t *testing.T, rdb redis.UniversalClient, key string) string {
	t.Helper()
	v, err := rdb.Get(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	f := strings.Split(v, "|")
	if len(f) < 4 {
		t.Fatalf("GET %s: a value of %d fields", key, len(f))
	}
	return f[1]
}

// TestForgedEventsFetchNothing: anyone who can PUBLISH can send an event on
// the notification channel. A Refreshed or Invalidated event that the store
// does not confirm (a version never written, or one that is not
// invalidated) must cost no fetch and no caller error, and is logged.
func TestForgedEventsFetchNothing(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		p := prefix(t)
		o := testOptions(p)
		var logs syncBuffer
		o.Source.Logger = jsonLogger(&logs)
		up := newUpstream(time.Hour)
		srcs := instances(t, b, 3, up, o)
		first, err := srcs[0].Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range srcs {
			if tok, err := s.Token(ctx); err != nil || tok.Value != first.Value {
				t.Fatalf("Token = %v, %v; want the shared %v", tok, err, first)
			}
		}
		admin := b.Client(t)
		channel := p + "events"
		waitSubs(t, admin, int64(len(srcs)), channel)

		// 8 callers, each going round the instances, until stop.
		stop := make(chan struct{})
		var (
			wg       sync.WaitGroup
			calls    atomic.Int64
			errs     atomic.Int64
			invalid  atomic.Int64
			firstErr atomic.Value
		)
		for i := range 8 {
			wg.Go(func() {
				for n := i; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					tok, err := srcs[n%len(srcs)].Token(cctx)
					cancel()
					calls.Add(1)
					switch {
					case err != nil:
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					case !up.Valid(tok.Value):
						invalid.Add(1)
					}
					time.Sleep(think()) // a caller's pace
				}
			})
		}
		defer func() { // a failed t.Fatal below must still stop the callers
			select {
			case <-stop:
			default:
				close(stop)
				wg.Wait()
			}
		}()

		tokenKey := "{" + p + "c}:token"
		for _, forged := range []func() string{
			// First, while the state is clean, so that its own cost shows.
			func() string { return "i " + storedVersion(t, admin, tokenKey) + " c" },
			func() string { return "r " + hugeVersion + " c" },
			func() string { return "i " + hugeVersion + " c" },
		} {
			msg := forged()
			before := up.Calls()
			if err := admin.Publish(ctx, channel, msg).Err(); err != nil {
				t.Fatal(err)
			}
			// Observe the callers for a while, on purpose: an unconfirmed
			// event must cause nothing, so there is no event to wait for.
			time.Sleep(350 * time.Millisecond)
			t.Logf("after PUBLISH %q: %d upstream calls (+%d)", msg, up.Calls(), up.Calls()-before)
		}
		close(stop)
		wg.Wait()

		warns := countLogs(logs.String(), "WARN", "does not confirm")
		t.Logf("%d Token calls, %d errors, %d invalid tokens; upstream calls %d; %d \"does not confirm\" warnings",
			calls.Load(), errs.Load(), invalid.Load(), up.Calls(), warns)
		if n := up.Calls(); n != 1 {
			t.Errorf("upstream calls = %d, want 1: forged events caused %d fetches", n, n-1)
		}
		if n := errs.Load(); n > 0 {
			t.Errorf("%d Token calls failed, first: %v", n, firstErr.Load())
		}
		if n := invalid.Load(); n > 0 {
			t.Errorf("%d Token calls returned a token the upstream rejects", n)
		}
		if calls.Load() == 0 {
			t.Error("no Token call returned")
		}
		if warns == 0 {
			t.Error(`no WARN log "... does not confirm" for the forged events`)
		}
	})
}

// TestTwoDeploymentsOnTwoDBs: two deployments of the same service, "prod"
// on DB 0 and "staging" on DB 1 of one Redis server, both with the default
// prefix and the same credential name, each with its own upstream. Pub/sub
// ignores the DB, so each hears the other's events; that must not make them
// fetch. 2 OS processes per deployment, 16 goroutines each.
func TestTwoDeploymentsOnTwoDBs(t *testing.T) {
	addr := realRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rb := make([]byte, 4)
	_, _ = rand.Read(rb)
	name := "twodb-" + hex.EncodeToString(rb)
	const defaultPrefix = "tokencache:"
	t.Cleanup(func() {
		for _, db := range []int{0, 1} {
			c := redis.NewClient(&redis.Options{Addr: addr, DB: db})
			tag := "{" + defaultPrefix + name + "}"
			_ = c.Del(context.Background(), tag+":token", tag+":lock", tag+":fence", tag+":backoff").Err()
			_ = c.Close()
		}
	})

	prod, staging := newUpstream(time.Hour), newUpstream(time.Hour)
	prodSrv, stagingSrv := httptest.NewServer(prod), httptest.NewServer(staging)
	defer prodSrv.Close()
	defer stagingSrv.Close()
	admin := newClient(t, addr)
	const d = 3 * time.Second
	env := func(db int) []string {
		return []string{childDuration + "=" + d.String(), childWorkers + "=16",
			childDB + "=" + strconv.Itoa(db), childName + "=" + name}
	}
	var forgedBefore [2]int
	var stagingReps []childReport
	start := time.Now()
	// An empty prefix is the default one.
	prodReps := runChildren(t, ctx, 2, "", prodSrv.URL, 2*time.Second, func() {
		stagingReps = runChildren(t, ctx, 2, "", stagingSrv.URL, 2*time.Second, func() {
			// Once both deployments have their token, and all four
			// processes listen, forge a refresh.
			if !scenario.Retry(d/2, time.Millisecond, func() bool { // polling the upstreams
				return prod.Issued() > 0 && staging.Issued() > 0
			}) {
				t.Errorf("no token after %v: prod issued %d, staging %d", d/2, prod.Issued(), staging.Issued())
				return
			}
			// Today both deployments listen on tokencache:events; once
			// channels name the DB, staging listens on ...events:db1.
			channels := []string{defaultPrefix + "events", defaultPrefix + "events:db1"}
			waitSubs(t, admin, 4, channels...)
			// Let the two deployments run side by side for a while (today
			// each one's refresh makes the other fetch), then forge.
			time.Sleep(d / 3) // on purpose: the subject is what happens meanwhile
			forgedBefore = [2]int{prod.Calls(), staging.Calls()}
			for _, ch := range channels {
				if err := admin.Publish(ctx, ch, "r "+hugeVersion+" "+name).Err(); err != nil {
					t.Error(err)
				}
			}
			if left := d - time.Since(start); left < d/5 {
				t.Errorf("forged the event only %v before the processes end: too late to observe", left)
			}
		}, env(1)...)
	}, env(0)...)

	var calls int64
	for _, dep := range []struct {
		name string
		up   *tokentest.Upstream
		reps []childReport
	}{{"prod", prod, prodReps}, {"staging", staging, stagingReps}} {
		for i, rep := range dep.reps {
			calls += rep.Calls
			for v := range rep.LastSeen {
				if _, ok := dep.up.ValidUntil(v); !ok {
					t.Errorf("%s process %d handed out a token its upstream never issued", dep.name, i)
				}
			}
		}
	}
	t.Logf("%d calls; prod upstream issued %d tokens (%d before the forged event), staging %d (%d before it)",
		calls, prod.Issued(), forgedBefore[0], staging.Issued(), forgedBefore[1])
	if n := prod.Issued(); n != 1 {
		t.Errorf("prod upstream issued %d tokens, want 1", n)
	}
	if n := staging.Issued(); n != 1 {
		t.Errorf("staging upstream issued %d tokens, want 1", n)
	}
	if forgedBefore[0] > 0 && (prod.Calls() != forgedBefore[0] || staging.Calls() != forgedBefore[1]) {
		t.Errorf("after the forged event prod fetched %d more times, staging %d more",
			prod.Calls()-forgedBefore[0], staging.Calls()-forgedBefore[1])
	}
}
