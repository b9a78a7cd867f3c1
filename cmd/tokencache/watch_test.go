package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// watcher is a watch command running in the background, its output read
// line by line through pipes.
type watcher struct {
	cancel context.CancelFunc
	out    chan string // stdout lines
	errs   *bufio.Reader
	done   chan int
}

func startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	or, ow := io.Pipe()
	er, ew := io.Pipe()
	w := &watcher{cancel: cancel, out: make(chan string, 16), errs: bufio.NewReader(er), done: make(chan int, 1)}
	go func() {
		code := runContext(ctx, args, ow, ew)
		_ = ow.Close()
		_ = ew.Close()
		w.done <- code
	}()
	go func() {
		defer close(w.out)
		s := bufio.NewScanner(or)
		for s.Scan() {
			w.out <- s.Text()
		}
	}()
	t.Cleanup(func() { w.stop(t) })
	// The subscription is confirmed when this line is written.
	line, err := w.errs.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "watching ") {
		t.Fatalf("watch said %q, %v", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, w.errs) }()
	return w
}

// next returns the next line printed, failing after a while.
func (w *watcher) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-w.out:
		if !ok {
			t.Fatal("watch ended")
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no event printed in 10s")
	}
	return ""
}

// stop interrupts the command and checks it exits cleanly.
func (w *watcher) stop(t *testing.T) {
	w.cancel()
	select {
	case code, ok := <-w.done:
		if ok && code != exitOK {
			t.Errorf("watch exited %d", code)
		}
		close(w.done)
	case <-time.After(10 * time.Second):
		t.Error("watch did not end after its context")
	}
}

// TestWatch: refreshes and invalidations are printed as they happen, with
// their credential and version; a malformed payload as its length only.
func TestWatch(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		d := deploy(t, b)
		_ = d.plain.Close() // a live Source would refetch after the invalidation
		w := startWatch(t, append(connFlags(b, d.prefix), "watch")...)
		cred, _ := d.cache.Credential("acct")
		sh, _ := cred.Load(ctx)
		if ok, err := cred.Invalidate(ctx, sh.Version); !ok || err != nil {
			t.Fatalf("Invalidate = %v, %v", ok, err)
		}
		if l := w.next(t); !strings.HasSuffix(l, fmt.Sprintf("invalidate  acct  version %d", sh.Version)) {
			t.Errorf("after Invalidate: %q", l)
		}
		v, _ := cred.NextVersion(ctx)
		const tok = "WATCHED-TOKEN-SECRET-0123456789"
		if err := cred.Save(ctx, token.Shared{Value: tok, Version: v, TTL: time.Minute, Lifetime: time.Minute}); err != nil {
			t.Fatal(err)
		}
		if l := w.next(t); !strings.HasSuffix(l, fmt.Sprintf("refresh     acct  version %d", v)) {
			t.Errorf("after Save version %d: %q", v, l)
		}
		secret := "MALFORMED-PAYLOAD-SECRET-0123456789"
		if err := d.rdb.Publish(ctx, channels(d.prefix, 0, false)[0], secret).Err(); err != nil {
			t.Fatal(err)
		}
		l := w.next(t)
		if !strings.Contains(l, fmt.Sprintf("malformed   %d bytes", len(secret))) {
			t.Errorf("after a malformed payload: %q", l)
		}
		noSecrets(t, append(d.secrets, tok, secret), l)
	})
}

// TestWatchNames: with names, only their events are printed.
func TestWatchNames(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		d := deploy(t, b)
		w := startWatch(t, append(connFlags(b, d.prefix), "watch", "rot")...)
		for _, name := range []string{"acct", "rot"} {
			cred, _ := d.cache.Credential(name)
			sh, _ := cred.Load(ctx)
			if ok, err := cred.Invalidate(ctx, sh.Version); !ok || err != nil {
				t.Fatalf("Invalidate %s = %v, %v", name, ok, err)
			}
		}
		if l := w.next(t); !strings.Contains(l, " rot ") {
			t.Errorf("first event printed: %q, want rot's", l)
		}
	})
}

// TestWatchOtherDB: on DB 3 the deployment's channel is DB-scoped; with
// -legacy-events the legacy channel is heard too, and each line names its
// channel. list and status work on that DB.
func TestWatchOtherDB(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		if b.IsCluster() {
			t.Skip("a Cluster has only DB 0")
		}
		ctx := context.Background()
		p := redistest.Prefix(t)
		rdb := redis.NewClient(&redis.Options{Addr: b.Addr, DB: 3})
		defer rdb.Close()
		cache, err := rediscache.New(rdb, rediscache.Options{Prefix: p, LegacyEvents: true, Source: token.Options{Logger: quiet}})
		if err != nil {
			t.Fatal(err)
		}
		cred, _ := cache.Credential("acct")
		v, _ := cred.NextVersion(ctx)
		flags := []string{"-redis", "redis://" + b.Addr + "/3", "-prefix", p}
		w := startWatch(t, append(flags, "-legacy-events", "watch")...)
		if err := cred.Save(ctx, token.Shared{Value: "DB3-TOKEN-SECRET-0123456789", Version: v, TTL: time.Minute, Lifetime: time.Minute}); err != nil {
			t.Fatal(err)
		}
		got := []string{w.next(t), w.next(t)}
		for _, ch := range []string{p + "events)", p + "events:db3)"} {
			want := fmt.Sprintf("refresh     acct  version %d  (%s", v, ch)
			if !slices.ContainsFunc(got, func(l string) bool { return strings.HasSuffix(l, want) }) {
				t.Errorf("lines %q, want one ending with %q", got, want)
			}
		}
		if r := runCmd(t, append(flags, "list")...); r.code != exitOK || r.stdout != "acct\n" {
			t.Errorf("list on DB 3: %v", r)
		}
		if r := runCmd(t, append(flags, "status", "acct")...); r.code != exitOK || !strings.Contains(r.stdout, fmt.Sprintf("version %d", v)) {
			t.Errorf("status on DB 3: %v", r)
		}
	})
}
