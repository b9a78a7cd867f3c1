package rediscache_test

// Issue 11, item 1: a refresher that dies mid-fetch costs seconds, not the
// lock TTL, with default Options. The harness here (instances as OS
// processes that report every token they hand out, an upstream that holds a
// chosen fetch) is shared with partition_test.go.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// An instance is this test binary re-executed with recChildEnv set: a
// service with default Options that calls Token from many goroutines.
const (
	recChildEnv    = "TOKENCACHE_RECOVERY_CHILD" // "1"
	recRedisEnv    = "TOKENCACHE_RECOVERY_REDIS" // host:port
	recPrefixEnv   = "TOKENCACHE_RECOVERY_PREFIX"
	recUpstreamEnv = "TOKENCACHE_RECOVERY_UPSTREAM" // base URL for tokentest.HTTPFetcher
	recWorkersEnv  = "TOKENCACHE_RECOVERY_GOROUTINES"
	recThinkEnv    = "TOKENCACHE_RECOVERY_THINK" // a caller's pause between calls
)

// init runs before TestMain: an instance never reaches the tests.
func init() {
	if os.Getenv(recChildEnv) != "" {
		os.Exit(recoveryChild())
	}
}

// recReport is what an instance prints last: everything its callers saw.
type recReport struct {
	Calls, Errors int64
	FirstErr      string
	// MaxWait is the longest Token call, which ended at MaxWaitEnd (Unix ns).
	MaxWait    time.Duration
	MaxWaitEnd int64
	// Hits counts the hand-outs of each token per wall-clock millisecond.
	Hits map[string]*recHits
}

// recHits counts hand-outs of one token: Counts[i] in the millisecond that
// starts at Unix millisecond Start+i.
type recHits struct {
	Start  int64
	Counts []int32
}

func (r *recReport) hit(v string, at time.Time) {
	ms := at.UnixMilli()
	h := r.Hits[v]
	if h == nil {
		h = &recHits{Start: ms}
		r.Hits[v] = h
	}
	if ms < h.Start { // the wall clock stepped back
		ms = h.Start
	}
	i := int(ms - h.Start)
	if i >= len(h.Counts) {
		h.Counts = append(h.Counts, make([]int32, i+1-len(h.Counts))...)
	}
	h.Counts[i]++
}

func (r *recReport) merge(o *recReport) {
	r.Calls += o.Calls
	r.Errors += o.Errors
	if r.FirstErr == "" {
		r.FirstErr = o.FirstErr
	}
	if o.MaxWait > r.MaxWait {
		r.MaxWait, r.MaxWaitEnd = o.MaxWait, o.MaxWaitEnd
	}
	for v, h := range o.Hits {
		m := r.Hits[v]
		if m == nil {
			r.Hits[v] = h
			continue
		}
		start := min(m.Start, h.Start)
		end := max(m.Start+int64(len(m.Counts)), h.Start+int64(len(h.Counts)))
		c := make([]int32, end-start)
		for i, n := range m.Counts {
			c[m.Start-start+int64(i)] += n
		}
		for i, n := range h.Counts {
			c[h.Start-start+int64(i)] += n
		}
		r.Hits[v] = &recHits{Start: start, Counts: c}
	}
}

// recoveryChild is an instance. It prints "ready" once its Source exists,
// starts its callers on a "go" line on stdin, prints "first <token> <unix
// ns>" the first time any caller is handed a token, and when stdin closes
// stops its callers and prints "report <json>".
func recoveryChild() int {
	workers, _ := strconv.Atoi(os.Getenv(recWorkersEnv))
	think, _ := time.ParseDuration(os.Getenv(recThinkEnv))
	// The client as the README sets it up.
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(recRedisEnv), ContextTimeoutEnabled: true})
	defer rdb.Close()
	// Default Options: only the prefix, so that tests sharing a server do
	// not share keys.
	src, err := rediscache.NewSource(rdb, "c", tokentest.HTTPFetcher(os.Getenv(recUpstreamEnv), nil),
		rediscache.Options{Prefix: os.Getenv(recPrefixEnv)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer src.Close()
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	say("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		return 0
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		for in.Scan() {
		}
		stop()
	}()
	var (
		mu    sync.Mutex
		total = recReport{Hits: map[string]*recHits{}}
		first sync.Map
		wg    sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			r := recReport{Hits: map[string]*recHits{}}
			for ctx.Err() == nil {
				// A generous deadline: the callers wait out any recovery.
				cctx, cancel := context.WithTimeout(ctx, time.Minute)
				start := time.Now()
				tok, err := src.Token(cctx)
				now := time.Now()
				cancel()
				if ctx.Err() != nil {
					break
				}
				r.Calls++
				if w := now.Sub(start); w > r.MaxWait {
					r.MaxWait, r.MaxWaitEnd = w, now.UnixNano()
				}
				if err != nil {
					r.Errors++
					if r.FirstErr == "" {
						r.FirstErr = err.Error()
					}
					continue
				}
				if r.Hits[tok.Value] == nil {
					if _, seen := first.LoadOrStore(tok.Value, true); !seen {
						say("first %s %d", tok.Value, now.UnixNano())
					}
				}
				r.hit(tok.Value, now)
				time.Sleep(think) // the caller's work with the token
			}
			mu.Lock()
			total.merge(&r)
			mu.Unlock()
		})
	}
	wg.Wait()
	b, err := json.Marshal(total)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	say("report %s", b)
	return 0
}

// fleet runs instances and collects what they print.
type fleet struct {
	t       *testing.T
	mu      sync.Mutex
	first   map[*instance]map[string]time.Time // guarded by mu
	changed chan struct{}                      // a value is sent when first changes
}

func newFleet(t *testing.T) *fleet {
	return &fleet{t: t, first: map[*instance]map[string]time.Time{}, changed: make(chan struct{}, 1)}
}

// instance is one child process.
type instance struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *syncBuffer
	ready  chan struct{}
	report chan recReport // receives the final report, if any
	eof    chan struct{}  // closed once stdout is closed
	once   sync.Once
}

// start runs an instance called name (its upstream path is /name), with
// wrap before the command (e.g. ip netns exec ns).
func (f *fleet) start(name string, wrap []string, redisAddr, p, upstream string, goroutines int) *instance {
	t := f.t
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append(slices.Clone(wrap), exe, "-test.run=^$")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(),
		recChildEnv+"=1", recRedisEnv+"="+redisAddr, recPrefixEnv+"="+p,
		recUpstreamEnv+"="+upstream+"/"+name, recWorkersEnv+"="+strconv.Itoa(goroutines),
		recThinkEnv+"="+think().String())
	in := &instance{name: name, cmd: cmd, stderr: new(syncBuffer),
		ready: make(chan struct{}), report: make(chan recReport, 1), eof: make(chan struct{})}
	cmd.Stderr = in.stderr
	if in.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.first[in] = map[string]time.Time{}
	f.mu.Unlock()
	go f.read(in, bufio.NewReader(out))
	t.Cleanup(func() {
		in.kill()
		if t.Failed() {
			s := in.stderr.String()
			if len(s) > 3000 {
				s = "..." + s[len(s)-3000:]
			}
			t.Logf("instance %s stderr:\n%s", in.name, s)
		}
	})
	return in
}

func (f *fleet) read(in *instance, r *bufio.Reader) {
	defer close(in.eof)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch kind, rest, _ := strings.Cut(line, " "); kind {
		case "ready":
			close(in.ready)
		case "first":
			v, ns, _ := strings.Cut(rest, " ")
			n, _ := strconv.ParseInt(ns, 10, 64)
			f.mu.Lock()
			f.first[in][v] = time.Unix(0, n)
			f.mu.Unlock()
			select {
			case f.changed <- struct{}{}:
			default:
			}
		case "report":
			var rep recReport
			if err := json.Unmarshal([]byte(rest), &rep); err == nil {
				in.report <- rep
			}
		}
	}
}

// waitReady waits until every instance has made its Source.
func (f *fleet) waitReady(ins ...*instance) {
	f.t.Helper()
	timeout := time.After(time.Minute)
	for _, in := range ins {
		select {
		case <-in.ready:
		case <-in.eof:
			f.t.Fatalf("instance %s exited: %s", in.name, in.stderr.String())
		case <-timeout:
			f.t.Fatalf("instance %s did not start", in.name)
		}
	}
}

// waitUntil waits until cond, called with the first hand-outs of each
// instance, holds, or until deadline; it reports whether cond held.
func (f *fleet) waitUntil(deadline time.Time, cond func(first map[*instance]map[string]time.Time) bool) bool {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		f.mu.Lock()
		ok := cond(f.first)
		f.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-f.changed:
		case <-timer.C:
			f.mu.Lock()
			defer f.mu.Unlock()
			return cond(f.first)
		}
	}
}

// firstAfter returns the first time in's callers were handed a token that
// the upstream issued after t (ok false if none yet). Call it with f.mu held
// (inside waitUntil) or after the instances stopped.
func firstAfter(up *tokentest.Upstream, first map[string]time.Time, t time.Time) (time.Time, bool) {
	issued := issueTimes(up)
	var best time.Time
	for v, at := range first {
		if it, ok := issued[v]; ok && it.After(t) && (best.IsZero() || at.Before(best)) {
			best = at
		}
	}
	return best, !best.IsZero()
}

func issueTimes(up *tokentest.Upstream) map[string]time.Time {
	m := map[string]time.Time{}
	times := up.IssueTimes()
	for i, v := range up.Tokens() {
		if i < len(times) {
			m[v] = times[i]
		}
	}
	return m
}

func (in *instance) send(line string) {
	_, _ = io.WriteString(in.stdin, line+"\n")
}

// stop ends the instance's callers and returns its report.
func (in *instance) stop(t *testing.T) recReport {
	t.Helper()
	_ = in.stdin.Close()
	select {
	case rep := <-in.report:
		in.kill()
		return rep
	case <-in.eof:
		in.kill()
		select {
		case rep := <-in.report:
			return rep
		default:
		}
		t.Fatalf("instance %s exited without a report: %s", in.name, in.stderr.String())
	case <-time.After(time.Minute):
		in.kill()
		t.Fatalf("instance %s did not report", in.name)
	}
	return recReport{}
}

// kill sends SIGKILL (if the process still runs) and reaps it.
func (in *instance) kill() {
	in.once.Do(func() {
		_ = in.cmd.Process.Kill()
		<-in.eof // Wait closes stdout: read it to the end first
		_ = in.cmd.Wait()
	})
}

// heldUpstream serves a tokentest.Upstream over HTTP under one path per
// instance (/<instance>/token), and holds the reply to the first fetch that
// trap accepts: the upstream issues the token (and so invalidates the
// previous one), then the reply waits for release.
type heldUpstream struct {
	up   *tokentest.Upstream
	mu   sync.Mutex
	trap func(instance string) bool // guarded by mu; nil once sprung
	hits chan heldFetch
	done chan struct{} // closed when the test ends
}

type heldFetch struct {
	instance string
	tok      token.Token
	issued   time.Time
	release  chan struct{} // close to send the reply
}

// serveHeld serves up on l (a loopback port if nil) until the test ends.
func serveHeld(t *testing.T, up *tokentest.Upstream, l net.Listener, trap func(instance string) bool) (*heldUpstream, *httptest.Server) {
	t.Helper()
	h := &heldUpstream{up: up, trap: trap, hits: make(chan heldFetch, 1), done: make(chan struct{})}
	srv := httptest.NewUnstartedServer(h)
	if l != nil {
		srv.Listener.Close()
		srv.Listener = l
	}
	srv.Start()
	t.Cleanup(srv.Close)
	// Cleanups run last-registered first: a held reply ends before Close
	// waits for it.
	t.Cleanup(func() { close(h.done) })
	return h, srv
}

func (h *heldUpstream) spring(instance string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.trap != nil && h.trap(instance) {
		h.trap = nil
		return true
	}
	return false
}

func (h *heldUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	inst, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	rest = "/" + rest
	if rest == "/token" && h.spring(inst) {
		tok, err := h.up.Fetch(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		f := heldFetch{instance: inst, tok: tok, issued: time.Now(), release: make(chan struct{})}
		h.hits <- f
		select {
		case <-f.release:
		case <-r.Context().Done():
			return
		case <-h.done:
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"token": tok.Value, "expires_in_ms": time.Until(tok.ExpiresAt).Milliseconds()})
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = rest
	h.up.ServeHTTP(w, r2)
}

// handedOut sums what reports say callers were handed: all tokens, and
// those the upstream had already stopped accepting (a millisecond in which
// the token died counts as valid: an undercount of at most 1 ms of calls
// per token). Tokens the upstream never issued are returned apart.
func handedOut(up *tokentest.Upstream, reps []recReport, after time.Time) (calls, invalid, invalidAfter int64, unknown []string) {
	for _, rep := range reps {
		for v, h := range rep.Hits {
			end, ok := up.ValidUntil(v)
			if !ok {
				unknown = append(unknown, v)
			}
			for i, n := range h.Counts {
				calls += int64(n)
				at := time.UnixMilli(h.Start + int64(i))
				if ok && !at.Before(end) {
					invalid += int64(n)
					if !at.Before(after) {
						invalidAfter += int64(n)
					}
				}
			}
		}
	}
	return
}

// TestDeadRefresherDefaultOptions: 4 OS processes × 32 goroutines with
// default Options, a strict upstream (2 s tokens, 100 ms per fetch). The
// process that fetches the first refresh is killed (SIGKILL) after the
// upstream issued it a token, so the token in Redis is already dead
// upstream. In each of 5 runs, every surviving instance hands out a valid
// token within 2 s + one fetch (+ a stated margin) of the kill, the upstream
// issues at most one token more than a healthy cluster would (the killed
// fetch's), and no caller gets an error.
//
// Before issue 11 this fails: the dead holder's lock blocks everyone for the
// default LockTTL of 10 s.
func TestDeadRefresherDefaultOptions(t *testing.T) {
	addr := os.Getenv(realRedisEnv)
	if addr == "" {
		addr = startRedis(t).addr() // a real server, never miniredis, for processes
	}
	const (
		runs       = 5
		procs      = 4
		goroutines = 32
		lifetime   = 2 * time.Second
		latency    = 100 * time.Millisecond
		// margin is for scheduling: 4 processes × 32 callers under the
		// race detector share 2 cores with the Redis server and the
		// test; a waiter woken as the lock expires can be scheduled
		// some 100 ms late, and the replacement must then reach each
		// process (a notification, or its next read).
		margin = 300 * time.Millisecond
		bound  = 2*time.Second + latency + margin
		// giveUp ends a run whose cluster has not recovered: long
		// enough to measure a 10 s lock TTL.
		giveUp = 15 * time.Second
		// tail keeps the survivors running after they recovered, to
		// catch a duplicate fetch (a healthy cluster refreshes a 2 s
		// token once a second: a 1 s refresh-ahead window by default).
		tail = 300 * time.Millisecond
	)
	var summary []string
	for run := 1; run <= runs; run++ {
		t.Run(fmt.Sprintf("run%d", run), func(t *testing.T) {
			up := tokentest.New(lifetime)
			up.Latency = latency
			// Hold the first fetch after the first token: the first refresh.
			hu, srv := serveHeld(t, up, nil, func(string) bool { return up.Issued() >= 1 })
			p := prefix(t)
			f := newFleet(t)
			var all []*instance
			for i := range procs {
				all = append(all, f.start(fmt.Sprintf("i%d", i), nil, addr, p, srv.URL, goroutines))
			}
			f.waitReady(all...)
			for _, in := range all {
				in.send("go")
			}
			var hit heldFetch
			select {
			case hit = <-hu.hits:
			case <-time.After(20 * time.Second):
				t.Fatalf("no refresh within 20s: upstream calls %d", up.Calls())
			}
			var victim *instance
			var survivors []*instance
			for _, in := range all {
				if in.name == hit.instance {
					victim = in
				} else {
					survivors = append(survivors, in)
				}
			}
			if victim == nil {
				t.Fatalf("held a fetch by unknown instance %q", hit.instance)
			}
			_ = victim.cmd.Process.Kill() // kill -9
			killed := time.Now()
			victim.kill()

			recovered := f.waitUntil(killed.Add(giveUp), func(first map[*instance]map[string]time.Time) bool {
				for _, in := range survivors {
					if _, ok := firstAfter(up, first[in], killed); !ok {
						return false
					}
				}
				return true
			})
			if recovered {
				time.Sleep(tail) // a measurement window, see tail
			}
			var reps []recReport
			for _, in := range survivors {
				reps = append(reps, in.stop(t))
			}

			// Recovery: the kill until every survivor handed out a token
			// issued after it (tokens issued before are dead: the killed
			// fetch's token replaced them).
			var worst time.Duration
			var per []string
			f.mu.Lock()
			for _, in := range survivors {
				at, ok := firstAfter(up, f.first[in], killed)
				if !ok {
					worst = max(worst, giveUp)
					per = append(per, in.name+" never")
					continue
				}
				worst = max(worst, at.Sub(killed))
				per = append(per, fmt.Sprintf("%s %v", in.name, at.Sub(killed).Round(time.Millisecond)))
			}
			f.mu.Unlock()

			// Fetches: the killed one is the one extra a healthy cluster
			// would not make; the recovery itself is one fetch, and any
			// other within 900 ms of it (less than one refresh period)
			// is a duplicate.
			var afterKill []time.Time
			for _, at := range up.IssueTimes() {
				if at.After(killed) {
					afterKill = append(afterKill, at)
				}
			}
			dups := 0
			for _, at := range afterKill[min(1, len(afterKill)):] {
				if at.Sub(afterKill[0]) < 900*time.Millisecond {
					dups++
				}
			}
			extra := 1 + dups

			var calls, errs int64
			var firstErr string
			var maxWait time.Duration
			for _, rep := range reps {
				calls += rep.Calls
				errs += rep.Errors
				if firstErr == "" {
					firstErr = rep.FirstErr
				}
				maxWait = max(maxWait, rep.MaxWait)
			}
			_, invalid, invalidAfterKill, unknown := handedOut(up, reps, killed)
			line := fmt.Sprintf("run %d: killed %s %v after the upstream issued its token; every survivor valid %v after the kill (%s; bound %v); "+
				"upstream: %d fetch(es) after the kill, %d failed call(s), extra fetches %d; callers: %d calls, %d errors, %d invalid tokens handed out (%d after the kill), max Token wait %v",
				run, victim.name, killed.Sub(hit.issued).Round(time.Millisecond), worst.Round(time.Millisecond), strings.Join(per, ", "), bound,
				len(afterKill), up.Calls()-up.Issued(), extra, calls, errs, invalid, invalidAfterKill, maxWait.Round(time.Millisecond))
			t.Log(line)
			summary = append(summary, line)
			if worst > bound {
				t.Errorf("every survivor held a valid token only %v after the kill; want at most %v (2s + one %v fetch + %v margin)", worst, bound, latency, margin)
			}
			if extra > 1 {
				t.Errorf("%d extra upstream fetches (the killed one and %d duplicate(s)); want at most 1", extra, dups)
			}
			if errs > 0 {
				t.Errorf("%d caller errors, first: %s", errs, firstErr)
			}
			if len(unknown) > 0 {
				t.Errorf("callers were handed %d token(s) the upstream never issued", len(unknown))
			}
		})
	}
	t.Logf("summary:\n%s", strings.Join(summary, "\n"))
}
