package rediscache_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
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

// Environment of a "push" child: the orders it offers, and the order of the
// newest push of the whole test.
const (
	childOrders = "TOKENCACHE_TEST_ORDERS"
	childNewest = "TOKENCACHE_TEST_NEWEST"
)

// pushReport is what a "push" child prints.
type pushReport struct {
	Stored, Errors int
	FirstErr       string
	// Asked counts calls of the request-a-push hook (must stay 0).
	Asked int
	// NewestStoredAt is when this child stored the newest push (0 if
	// another did); ServedAt is when it first served it (Unix ns).
	NewestStoredAt, ServedAt int64
}

func pushValue(order int64) string { return fmt.Sprintf("ticket-%d-0123456789", order) }

// pushChild offers its share of the pushes from 4 goroutines, then waits
// until it serves the newest one.
func pushChild() int {
	var orders []int64
	for _, f := range strings.Split(os.Getenv(childOrders), ",") {
		o, _ := strconv.ParseInt(f, 10, 64)
		orders = append(orders, o)
	}
	newest, _ := strconv.ParseInt(os.Getenv(childNewest), 10, 64)
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(realRedisEnv)})
	defer rdb.Close()
	var mu sync.Mutex // guards rep
	var rep pushReport
	f := token.AwaitPush(func(context.Context) error { mu.Lock(); rep.Asked++; mu.Unlock(); return nil })
	src, err := rediscache.NewSource(rdb, "ticket", f, rediscache.Options{Prefix: os.Getenv(childPrefix), Source: token.Options{Logger: quiet}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer src.Close()
	ctx := context.Background()
	work := make(chan int64)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for o := range work {
				ok, err := src.Offer(ctx, token.Push{Value: pushValue(o), Order: o, Lifetime: time.Hour, MaxLead: 86400})
				now := time.Now().UnixNano()
				mu.Lock()
				switch {
				case err != nil:
					rep.Errors++
					if rep.FirstErr == "" {
						rep.FirstErr = err.Error()
					}
				case ok:
					rep.Stored++
					if o == newest {
						rep.NewestStoredAt = now
					}
				}
				mu.Unlock()
			}
		})
	}
	for _, o := range orders {
		work <- o
	}
	close(work)
	wg.Wait()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) { // polling what it serves
		if tok, err := src.Token(ctx); err == nil && tok.Value == pushValue(newest) {
			rep.ServedAt = time.Now().UnixNano()
			break
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

// TestPushesFromProcessesKeepTheNewest: 1,000 pushes in shuffled issuer
// order (timestamps in seconds), split over 8 OS processes that offer them
// from 4 goroutines each, on a real Redis. The store keeps the newest, every
// process serves it within the notification window, and nothing asks the
// upstream.
func TestPushesFromProcessesKeepTheNewest(t *testing.T) {
	realRedis(t)
	const n, procs = 1000, 8
	const base = 1_700_000_000
	p := prefix(t)
	orders := rand.Perm(n)
	shares := make([][]string, procs)
	for i, o := range orders {
		shares[i%procs] = append(shares[i%procs], strconv.Itoa(base+o))
	}
	newest := strconv.Itoa(base + n - 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cmds []*exec.Cmd
	var outs []*bufio.Reader
	for i := range procs {
		cmd := child(t, ctx, "push", p, "", 0, childOrders+"="+strings.Join(shares[i], ","), childNewest+"="+newest)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, bufio.NewReader(out))
	}
	var reps []pushReport
	var storedAt, servedBy int64
	stored := 0
	for i, cmd := range cmds {
		var rep pushReport
		if err := json.NewDecoder(outs[i]).Decode(&rep); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		switch {
		case rep.Errors > 0:
			t.Errorf("child %d: %d errors, first: %s", i, rep.Errors, rep.FirstErr)
		case rep.Asked > 0:
			t.Errorf("child %d asked the upstream to push %d times, want 0", i, rep.Asked)
		case rep.ServedAt == 0:
			t.Errorf("child %d never served the newest push", i)
		}
		stored += rep.Stored
		storedAt = max(storedAt, rep.NewestStoredAt)
		servedBy = max(servedBy, rep.ServedAt)
		reps = append(reps, rep)
	}
	c := newCache(t, newClient(t, os.Getenv(realRedisEnv)), rediscache.Options{Prefix: p})
	cred, _ := c.Credential("ticket")
	want, _ := strconv.ParseInt(newest, 10, 64)
	if sh, err := cred.Load(context.Background()); err != nil || sh.Value != pushValue(want) {
		t.Fatalf("stored %q, %v; want the newest push", sh.Value, err)
	}
	if storedAt == 0 {
		t.Fatal("no child stored the newest push")
	}
	window := time.Duration(servedBy - storedAt)
	t.Logf("%d pushes from %d processes × 4 goroutines: %d stored on the way, newest kept; every process served it within %v of its write; 0 upstream calls",
		n, procs, stored, window.Round(time.Millisecond))
	if window > 2*time.Second {
		t.Errorf("the last process served the newest push %v after its write, want within 2s", window)
	}
}
