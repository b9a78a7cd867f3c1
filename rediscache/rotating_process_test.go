package rediscache_test

// Issue 13: rotating refresh tokens shared by instances that are OS
// processes. The test process serves one tokentest.Rotating per credential
// over HTTP (an OAuth2 token endpoint, refresh_token grant) and records
// every redemption: who sent it (the child's pid, in a header), when it
// arrived, when the server acted on it (rotated the refresh token), when
// the reply went out. The children are this test binary re-executed: 100
// Sources each (one Cache), called from many goroutines on random
// credentials.
//
// TestRotatingRefreshProcesses is the clean run; TestRotatingRefreshFaults
// kills (SIGKILL) the process whose redemption the server holds, at random
// points, and deletes the refresh lock of a redemption in flight, with and
// without a reuse grace period, and reports where the kills landed.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// A child is this test binary with rotChildEnv set.
const (
	rotChildEnv    = "TOKENCACHE_ROTATING_CHILD" // "1"
	rotRedisEnv    = "TOKENCACHE_ROTATING_REDIS" // host:port
	rotPrefixEnv   = "TOKENCACHE_ROTATING_PREFIX"
	rotUpstreamEnv = "TOKENCACHE_ROTATING_UPSTREAM" // base URL; credential c's endpoint is <base>/c
	rotCredsEnv    = "TOKENCACHE_ROTATING_CREDENTIALS"
	rotWorkersEnv  = "TOKENCACHE_ROTATING_GOROUTINES"
	rotPaceEnv     = "TOKENCACHE_ROTATING_PACE" // a caller's pause between calls
	pidHeader      = "X-Test-Pid"
)

// init runs before TestMain: a child never reaches the tests.
func init() {
	if os.Getenv(rotChildEnv) != "" {
		os.Exit(rotatingChild())
	}
}

func rotCredName(i int) string { return fmt.Sprintf("c%03d", i) }

// rotReport is what a child's callers saw.
type rotReport struct {
	Calls int64
	// Revoked, Expired and Other count errors per credential: those
	// matching token.ErrRefreshRevoked; those of a refresh whose upstream
	// answered an expired access token (ErrInvalidToken, and the backoff
	// it causes); the rest.
	Revoked, Expired, Other map[string]int64
	FirstOther              string
	// Seen maps each access token handed out to the start of the latest
	// call that was handed it (Unix ns; one clock for all processes): the
	// call handed it out at that time or later.
	Seen map[string]int64
	// Expiry maps each access token to the latest ExpiresAt the Source
	// reported with it (Unix ns).
	Expiry map[string]int64
}

func newRotReport() *rotReport {
	return &rotReport{Revoked: map[string]int64{}, Expired: map[string]int64{}, Other: map[string]int64{},
		Seen: map[string]int64{}, Expiry: map[string]int64{}}
}

// record counts a call of cred that started at start.
func (r *rotReport) record(cred string, tok token.Token, err error, start time.Time) {
	r.Calls++
	var be *token.BackoffError
	switch {
	case errors.Is(err, token.ErrRefreshRevoked):
		r.Revoked[cred]++
	case errors.Is(err, token.ErrInvalidToken), errors.As(err, &be) && be.Class == token.ClassInvalidToken:
		r.Expired[cred]++
	case err != nil:
		r.Other[cred]++
		if r.FirstOther == "" {
			r.FirstOther = cred + ": " + err.Error()
		}
	default:
		r.Seen[tok.Value] = max(r.Seen[tok.Value], start.UnixNano())
		r.Expiry[tok.Value] = max(r.Expiry[tok.Value], tok.ExpiresAt.UnixNano())
	}
}

func (r *rotReport) merge(o *rotReport) {
	r.Calls += o.Calls
	for _, m := range [][2]map[string]int64{{r.Revoked, o.Revoked}, {r.Expired, o.Expired}, {r.Other, o.Other}} {
		for c, n := range m[1] {
			m[0][c] += n
		}
	}
	if r.FirstOther == "" {
		r.FirstOther = o.FirstOther
	}
	for _, m := range [][2]map[string]int64{{r.Seen, o.Seen}, {r.Expiry, o.Expiry}} {
		for v, t := range m[1] {
			m[0][v] = max(m[0][v], t)
		}
	}
}

// pidTransport sends the child's pid with every request, so that the
// server knows whose redemption it holds.
type pidTransport struct {
	base http.RoundTripper
	pid  string
}

func (p pidTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set(pidHeader, p.pid)
	return p.base.RoundTrip(req)
}

// rotNamed is one credential's Source in a child.
type rotNamed struct {
	name string
	src  *token.Source
}

// rotChildSources makes the child's Sources: one Cache, default Options
// but the prefix (and a quiet logger).
func rotChildSources() ([]rotNamed, func(), error) {
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(rotRedisEnv), ContextTimeoutEnabled: true})
	c, err := rediscache.New(rdb, rediscache.Options{Prefix: os.Getenv(rotPrefixEnv), Source: token.Options{Logger: quiet}})
	if err != nil {
		return nil, nil, err
	}
	n, _ := strconv.Atoi(os.Getenv(rotCredsEnv))
	client := &http.Client{Transport: pidTransport{
		base: &http.Transport{MaxIdleConnsPerHost: 64},
		pid:  strconv.Itoa(os.Getpid()),
	}}
	var srcs []rotNamed
	closeAll := func() {
		for _, s := range srcs {
			_ = s.src.Close()
		}
		_ = rdb.Close()
	}
	for i := range n {
		name := rotCredName(i)
		s, err := c.Source(name, tokentest.HTTPRedeemer(os.Getenv(rotUpstreamEnv)+"/"+name, client))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		srcs = append(srcs, rotNamed{name, s})
	}
	return srcs, closeAll, nil
}

// rotatingChild prints "ready" once its Sources exist, starts its callers
// on a "go" line, stops them on a "stop" line (or at end of input) and
// prints "report <json>", then closes its Sources at end of input. The
// parent closes input only once no redemption is in flight: a Source
// closed mid-redemption loses the rotated refresh token with the reply.
func rotatingChild() int {
	srcs, closeAll, err := rotChildSources()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer closeAll()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		return 0
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	eof := make(chan struct{})
	go func() {
		for in.Scan() {
			if in.Text() == "stop" {
				stop()
			}
		}
		stop()
		close(eof)
	}()
	rep := rotLoad(ctx, srcs)
	b, err := json.Marshal(rep)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("report %s\n", b)
	<-eof
	return 0
}

// rotLoad calls Token on random credentials from many goroutines until
// ctx ends, each pausing between calls (load generation).
func rotLoad(ctx context.Context, srcs []rotNamed) *rotReport {
	workers, _ := strconv.Atoi(os.Getenv(rotWorkersEnv))
	pace, _ := time.ParseDuration(os.Getenv(rotPaceEnv))
	total := newRotReport()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			r := newRotReport()
			for ctx.Err() == nil {
				s := srcs[rand.IntN(len(srcs))]
				cctx, cancel := context.WithTimeout(ctx, time.Minute)
				start := time.Now()
				tok, err := s.src.Token(cctx)
				cancel()
				if ctx.Err() != nil {
					break
				}
				r.record(s.name, tok, err, start)
				time.Sleep(pace)
			}
			mu.Lock()
			total.merge(r)
			mu.Unlock()
		})
	}
	wg.Wait()
	return total
}

// What the server did with a redemption.
const (
	outGone    = "gone"    // the client went away before the server acted
	outRotated = "rotated" // a new access token and refresh token
	outGrace   = "grace"   // a replaced refresh token within Grace: the pair already issued
	outRevoked = "revoked" // a replaced refresh token: the family is revoked
	outRefused = "refused" // the family was revoked already
)

// redemption is one request to the token endpoint. Its fields after
// arrived are guarded by rotServer.mu.
type redemption struct {
	pid              int // 0: the test process itself
	cred             string
	fault            *faultPlan
	arrived          time.Time
	acted, replied   time.Time // zero until then
	clientGone       bool      // the reply was written after the client went away
	outcome          string
	old, next, token string // refresh token sent and received, access token received
}

// faultPlan is a fault the server applies to the next redemption it
// receives from a child (one whose credential is not revoked).
type faultPlan struct {
	lockLoss  bool
	pre, post time.Duration // holds before acting and before replying
	release   chan struct{} // ends the post hold early (lock loss: the takeover arrived)
	hit       chan *redemption
	acted     chan struct{} // closed once the server acted on it
	finished  chan struct{} // closed when its handler returns
	endedBy   string        // what ended the post hold; guarded by rotServer.mu
}

func newFaultPlan(lockLoss bool, pre, post time.Duration) *faultPlan {
	return &faultPlan{lockLoss: lockLoss, pre: pre, post: post, release: make(chan struct{}),
		hit: make(chan *redemption, 1), acted: make(chan struct{}), finished: make(chan struct{})}
}

// rotCred is one credential's family at the server.
type rotCred struct {
	up          *tokentest.Rotating
	seq         []string         // its refresh tokens, oldest (the seed) first
	index       map[string]int   // refresh token → position in seq
	rotatedBy   []*redemption    // rotatedBy[i] replaced seq[i]
	access      map[string]int64 // access token → expiry (Unix ns, as the client sees it)
	revokedAt   time.Time        // zero while not revoked
	revocations int              // up.Revocations() already accounted for
	held        *redemption      // a lock-loss target holding its reply
	requests    []*redemption    // all redemptions of this credential
}

// rotServer is the token endpoint of every credential: /<credential>.
type rotServer struct {
	latency time.Duration       // every reply's, after the server acted
	creds   map[string]*rotCred // fixed once serving

	mu     sync.Mutex
	active int // requests being served
	plan   *faultPlan
	last   time.Time         // the latest arrival
	killed map[int]time.Time // pid → when the test killed it
	reqs   []*redemption
	done   chan struct{} // closed when the test ends: no hold outlives it
}

func newRotServer(n int, lifetime, grace, latency time.Duration) *rotServer {
	s := &rotServer{latency: latency, creds: map[string]*rotCred{}, killed: map[int]time.Time{}, done: make(chan struct{})}
	for i := range n {
		up := tokentest.NewRotating(lifetime)
		up.Grace = grace // Latency stays 0: the server below holds replies itself
		rt := up.Authorize()
		s.creds[rotCredName(i)] = &rotCred{up: up, seq: []string{rt}, index: map[string]int{rt: 0}, access: map[string]int64{}}
	}
	return s
}

func (s *rotServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	c := s.creds[name]
	if c == nil || r.ParseForm() != nil { // parsed here, not under the lock
		http.NotFound(w, r)
		return
	}
	pid, _ := strconv.Atoi(r.Header.Get(pidHeader))
	red := s.arrive(c, name, pid)
	defer s.leave(red)
	pre, post, release := time.Duration(0), s.latency, (chan struct{})(nil)
	if f := red.fault; f != nil {
		pre, post, release = f.pre, f.post, f.release
	}
	if s.hold(r.Context(), pre, nil) != "" {
		return // gone before the server acted: it never will
	}
	rec := httptest.NewRecorder()
	s.act(c, red, r, rec)
	ended := s.hold(r.Context(), post, release)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	s.replied(red, ended)
}

// hold waits d, or until release, and returns "" or what ended it early.
func (s *rotServer) hold(ctx context.Context, d time.Duration, release chan struct{}) string {
	if d <= 0 {
		if ctx.Err() != nil {
			return "client gone"
		}
		return ""
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return ""
	case <-release:
		return "released"
	case <-ctx.Done():
		return "client gone"
	case <-s.done:
		return "test over"
	}
}

// arrive records a redemption, hands it an armed fault, and releases a
// held lock-loss target once another process redeems its credential.
func (s *rotServer) arrive(c *rotCred, name string, pid int) *redemption {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active++
	red := &redemption{pid: pid, cred: name, arrived: time.Now(), outcome: outGone}
	s.last = red.arrived
	s.reqs = append(s.reqs, red)
	c.requests = append(c.requests, red)
	if h := c.held; h != nil && h.pid != pid {
		c.held = nil
		close(h.fault.release)
	}
	_, dead := s.killed[pid]
	if f := s.plan; f != nil && pid != 0 && !dead && c.revokedAt.IsZero() && (!f.lockLoss || c.held == nil) {
		s.plan, red.fault = nil, f
		if f.lockLoss {
			c.held = red
		}
		f.hit <- red
	}
	return red
}

// act lets the credential's Rotating answer and records what it did.
func (s *rotServer) act(c *rotCred, red *redemption, r *http.Request, rec *httptest.ResponseRecorder) {
	s.mu.Lock()
	defer s.mu.Unlock()
	red.acted, red.old = time.Now(), r.PostForm.Get("refresh_token")
	current := c.seq[len(c.seq)-1]
	c.up.ServeHTTP(rec, r)
	var rep tokentest.RotatingReply
	switch {
	case rec.Code == http.StatusOK && json.Unmarshal(rec.Body.Bytes(), &rep) == nil:
		red.next, red.token, red.outcome = rep.RefreshToken, rep.AccessToken, outGrace
		if red.old == current {
			red.outcome = outRotated
			c.rotatedBy = append(c.rotatedBy, red)
			c.index[rep.RefreshToken] = len(c.seq)
			c.seq = append(c.seq, rep.RefreshToken)
			c.access[rep.AccessToken] = time.UnixMilli(rep.ExpiresAtMS).UnixNano()
		}
	case c.up.Revocations() > c.revocations:
		c.revocations++
		c.revokedAt, red.outcome = red.acted, outRevoked
	default:
		red.outcome = outRefused
	}
	if f := red.fault; f != nil {
		close(f.acted)
	}
}

func (s *rotServer) replied(red *redemption, ended string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	red.replied, red.clientGone = time.Now(), ended == "client gone"
	if f := red.fault; f != nil {
		f.endedBy = ended
	}
}

func (s *rotServer) leave(red *redemption) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := red.fault; f != nil {
		if c := s.creds[red.cred]; c.held == red {
			c.held = nil
		}
		close(f.finished)
	}
	s.active--
}

// arm makes f the fault of the next eligible redemption.
func (s *rotServer) arm(f *faultPlan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.plan = f
}

func (s *rotServer) markKilled(pid int, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killed[pid] = at
}

// rotInstance is one child process.
type rotInstance struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *syncBuffer
	ready  chan struct{}
	report chan *rotReport // receives the report, if any
	eof    chan struct{}   // closed once stdout is closed
	once   sync.Once
}

func (in *rotInstance) pid() int { return in.cmd.Process.Pid }

func (in *rotInstance) send(line string) { _, _ = io.WriteString(in.stdin, line+"\n") }

// kill sends SIGKILL (if the process still runs) and reaps it.
func (in *rotInstance) kill() {
	in.once.Do(func() {
		_ = in.cmd.Process.Kill()
		<-in.eof // Wait closes stdout: read it to the end first
		_ = in.cmd.Wait()
	})
}

func (in *rotInstance) read(r *bufio.Reader) {
	defer close(in.eof)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		kind, rest, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
		switch kind {
		case "ready":
			close(in.ready)
		case "report":
			rep := newRotReport()
			if json.Unmarshal([]byte(rest), rep) == nil {
				in.report <- rep
			}
		}
	}
}

// rotConfig is one run's setup.
type rotConfig struct {
	procs, goroutines, creds, lifetimes int
	lifetime, grace, latency            time.Duration
	pace                                time.Duration // a caller's pause between calls
}

// rotHarness runs children against one server and one Redis.
type rotHarness struct {
	t      *testing.T
	cfg    rotConfig
	srv    *rotServer
	url    string
	addr   string
	prefix string
	rdb    *redis.Client
	creds  map[string]*rediscache.Credential // the test's own view of Redis
	seeded map[string]int64                  // credential → generation of its seed

	mu   sync.Mutex // guards live
	live []*rotInstance
}

func newRotHarness(t *testing.T, addr string, cfg rotConfig) *rotHarness {
	t.Helper()
	h := &rotHarness{t: t, cfg: cfg, addr: addr, prefix: prefix(t), rdb: newClient(t, addr),
		creds: map[string]*rediscache.Credential{}, seeded: map[string]int64{}}
	h.srv = newRotServer(cfg.creds, cfg.lifetime, cfg.grace, cfg.latency)
	hs := httptest.NewServer(h.srv)
	t.Cleanup(hs.Close)
	// Cleanups run last-registered first: held replies end before Close
	// waits for them.
	t.Cleanup(func() { close(h.srv.done) })
	h.url = hs.URL
	c := newCache(t, h.rdb, rediscache.Options{Prefix: h.prefix, Source: token.Options{Logger: quiet}})
	ctx := context.Background()
	for name, rc := range h.srv.creds {
		cred, err := c.Credential(name)
		if err != nil {
			t.Fatal(err)
		}
		gen, err := cred.SeedRefresh(ctx, rc.seq[0]) // the authorization callback
		if err != nil {
			t.Fatal(err)
		}
		h.creds[name], h.seeded[name] = cred, gen
	}
	return h
}

// start runs a child, waits until it is ready and starts its callers.
func (h *rotHarness) start() *rotInstance {
	t := h.t
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), rotChildEnv+"=1", rotRedisEnv+"="+h.addr, rotPrefixEnv+"="+h.prefix,
		rotUpstreamEnv+"="+h.url, rotCredsEnv+"="+strconv.Itoa(h.cfg.creds),
		rotWorkersEnv+"="+strconv.Itoa(h.cfg.goroutines), rotPaceEnv+"="+h.cfg.pace.String())
	in := &rotInstance{cmd: cmd, stderr: new(syncBuffer), ready: make(chan struct{}),
		report: make(chan *rotReport, 1), eof: make(chan struct{})}
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
	go in.read(bufio.NewReaderSize(out, 1<<20))
	t.Cleanup(func() {
		in.kill()
		if s := in.stderr.String(); t.Failed() && s != "" {
			t.Logf("child %d stderr (tail):\n%s", in.pid(), s[max(0, len(s)-2000):])
		}
	})
	select {
	case <-in.ready:
	case <-in.eof:
		t.Fatalf("child exited: %s", in.stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("child did not start")
	}
	in.send("go")
	h.mu.Lock()
	h.live = append(h.live, in)
	h.mu.Unlock()
	return in
}

// byPid returns the live child with pid, or nil.
func (h *rotHarness) byPid(pid int) *rotInstance {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, in := range h.live {
		if in.pid() == pid {
			return in
		}
	}
	return nil
}

// remove forgets a killed child.
func (h *rotHarness) remove(dead *rotInstance) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, in := range h.live {
		if in == dead {
			h.live = append(h.live[:i], h.live[i+1:]...)
			return
		}
	}
}

// quiesce waits until no refresh can be under way: no request served or
// received for 3 poll intervals (a refresh started before the callers
// stopped may still be waiting for another instance's), and no refresh
// lock held.
func (h *rotHarness) quiesce() {
	locks := make([]string, 0, len(h.creds))
	for name := range h.creds {
		locks = append(locks, "{"+h.prefix+name+"}:lock")
	}
	if !scenario.Retry(30*time.Second, 20*time.Millisecond, func() bool { // polling the server's and Redis's state
		h.srv.mu.Lock()
		busy := h.srv.active > 0 || time.Since(h.srv.last) < 750*time.Millisecond
		h.srv.mu.Unlock()
		n, err := h.rdb.Exists(context.Background(), locks...).Result()
		return !busy && err == nil && n == 0
	}) {
		h.t.Error("refreshes still under way 30s after the callers stopped")
	}
}

// stopAll stops every child's callers and collects the reports; once no
// refresh is under way, the children close their Sources and exit. (A
// Source closed mid-redemption loses the rotated refresh token: that is a
// shutdown's problem, not this measurement's.)
func (h *rotHarness) stopAll() []*rotReport {
	t := h.t
	t.Helper()
	h.mu.Lock()
	live := append([]*rotInstance(nil), h.live...)
	h.mu.Unlock()
	for _, in := range live {
		in.send("stop")
	}
	var reps []*rotReport
	for _, in := range live {
		select {
		case rep := <-in.report:
			reps = append(reps, rep)
		case <-in.eof:
			t.Fatalf("child %d exited without a report: %s", in.pid(), in.stderr.String())
		case <-time.After(time.Minute):
			t.Fatalf("child %d did not report", in.pid())
		}
	}
	h.quiesce()
	for _, in := range live {
		_ = in.stdin.Close()
	}
	for _, in := range live {
		<-in.eof
		if err := in.cmd.Wait(); err != nil {
			t.Errorf("child %d: %v: %s", in.pid(), err, in.stderr.String())
		}
		in.once.Do(func() {})
	}
	return reps
}

// watchGenerations samples every credential's stored refresh state until
// ctx ends, and returns what went wrong: a state the server never issued,
// one stored under a generation that does not match its place in the
// family, or one older than a state sampled before (a generation going
// backwards).
func (h *rotHarness) watchGenerations(ctx context.Context) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		last := map[string]int{}
		var bad []string
		tick := time.NewTicker(250 * time.Millisecond) // sampling, not waiting for anything
		defer tick.Stop()
		for {
			for name := range h.creds {
				if msg := h.checkGeneration(name, last); msg != "" && len(bad) < 20 {
					bad = append(bad, msg)
				}
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				out <- bad
				return
			}
		}
	}()
	return out
}

func (h *rotHarness) checkGeneration(name string, last map[string]int) string {
	st, err := h.creds[name].LoadRefresh(context.Background())
	if err != nil {
		return fmt.Sprintf("%s: %v", name, err)
	}
	h.srv.mu.Lock()
	i, ok := h.srv.creds[name].index[st.Value]
	h.srv.mu.Unlock()
	want := h.seeded[name] + int64(i)
	switch {
	case !ok:
		return fmt.Sprintf("%s: generation %d holds a refresh token the server never issued", name, st.Generation)
	case st.Generation != want:
		return fmt.Sprintf("%s: generation %d holds refresh token #%d (want generation %d)", name, st.Generation, i, want)
	case i < last[name]:
		return fmt.Sprintf("%s: refresh token #%d stored after #%d", name, i, last[name])
	}
	last[name] = i
	return ""
}

// rotResults is what a run's server, reports and Redis add up to.
type rotResults struct {
	redemptions     map[string]int // children's, per credential
	minRed, maxRed  int
	total           int
	graceHits       int            // reuses the server answered within Grace
	revocations     int            // reuses that revoked a family
	revoked         []string       // the families revoked
	causes          map[string]int // reuses by what caused them
	unexplained     []string       // reuses no fault explains
	maxReuseDelay   time.Duration  // the longest from a rotation to a reuse of what it replaced
	afterRevocation int            // most redemptions of one family after its revocation
	// Families not revoked whose stored refresh state is not the
	// server's current one; lostAtShutdown: last rotated after the
	// callers stopped, for a client that went away.
	lost, lostAtShutdown []string

	calls                  int64
	revokedErrs, otherErrs int64
	expiredErrs            int64 // after the upstream answered an expired access token
	firstOther             string
	revokedBy              map[string]int64 // callers' ErrRefreshRevoked per credential
	revokedOnHealthy       []string         // ErrRefreshRevoked on a family never revoked

	// Access tokens handed out: how many, how many the server never
	// issued, how many handed out after the server's expiry (and of
	// those, after an ExpiresAt the Source reported later than the
	// server's), after the ExpiresAt the Source itself reported, or after
	// their family was revoked.
	tokens, unknown, expired, laterExpiry, pastOwn, deadFamily int
	maxLate, maxPastOwn                                        time.Duration
	skews, lates                                               []time.Duration // Source's ExpiresAt - server's; lateness past the server's
}

// results adds up the run. stopped is when the test stopped the callers.
func (h *rotHarness) results(reps []*rotReport, kills map[int]*rotKill, stopped time.Time) rotResults {
	s := h.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	r := rotResults{redemptions: map[string]int{}, causes: map[string]int{}, minRed: -1}
	for name, c := range s.creds {
		h.countRedemptions(&r, name, c, kills)
		if !c.revokedAt.IsZero() {
			continue
		}
		st, err := h.creds[name].LoadRefresh(context.Background())
		if err == nil && st.Value == c.seq[len(c.seq)-1] {
			continue
		}
		if n := len(c.rotatedBy); n > 0 && c.rotatedBy[n-1].arrived.After(stopped) && c.rotatedBy[n-1].clientGone {
			r.lostAtShutdown = append(r.lostAtShutdown, name)
			continue
		}
		r.lost = append(r.lost, name)
	}
	h.countHandOuts(&r, reps)
	return r
}

// countRedemptions adds up one credential's redemptions and reuses.
func (h *rotHarness) countRedemptions(r *rotResults, name string, c *rotCred, kills map[int]*rotKill) {
	n, after := 0, 0
	for _, red := range c.requests {
		if red.pid == 0 {
			continue
		}
		n++
		if !c.revokedAt.IsZero() && red.arrived.After(c.revokedAt) {
			after++
		}
		if red.outcome != outGrace && red.outcome != outRevoked {
			continue
		}
		r1 := c.rotatedBy[c.index[red.old]]
		cause := h.cause(r1, kills)
		r.causes[cause]++
		if cause == "unexplained" {
			r.unexplained = append(r.unexplained, h.describeReuse(name, c, red, r1, kills))
		}
		r.maxReuseDelay = max(r.maxReuseDelay, red.acted.Sub(r1.acted))
		if red.outcome == outGrace {
			r.graceHits++
		} else {
			r.revocations++
			r.revoked = append(r.revoked, name)
		}
	}
	r.redemptions[name] = n
	r.total += n
	r.maxRed = max(r.maxRed, n)
	if r.minRed < 0 || n < r.minRed {
		r.minRed = n
	}
	r.afterRevocation = max(r.afterRevocation, after)
}

// describeReuse says what is known of a reuse no fault explains.
func (h *rotHarness) describeReuse(name string, c *rotCred, red, r1 *redemption, kills map[int]*rotKill) string {
	killed := "not killed"
	if k := kills[r1.pid]; k != nil {
		killed = fmt.Sprintf("killed %v after the reply, landing %s", k.at.Sub(r1.replied).Round(time.Millisecond), h.phase(r1, k))
	}
	return fmt.Sprintf("%s: pid %d redeemed #%d (%s) %v after pid %d rotated it (reply %v after acting, client gone %v; %s)",
		name, red.pid, c.index[red.old], red.outcome, red.acted.Sub(r1.acted).Round(time.Millisecond), r1.pid,
		r1.replied.Sub(r1.acted).Round(time.Millisecond), r1.clientGone, killed)
}

// cause says why the refresh token r1 replaced was redeemed again: r1's
// process was killed before its commit reached Redis, or r1's lock was
// deleted by the test.
func (h *rotHarness) cause(r1 *redemption, kills map[int]*rotKill) string {
	if r1.fault != nil && r1.fault.lockLoss {
		return "lock loss"
	}
	if k := kills[r1.pid]; k != nil {
		switch ph := h.phase(r1, k); ph {
		case "a":
			return "kill (a: acted after the kill)"
		case "b", "c":
			return "kill (" + ph + ")"
		}
	}
	return "unexplained"
}

// countHandOuts checks every access token the callers were handed.
func (h *rotHarness) countHandOuts(r *rotResults, reps []*rotReport) {
	all := newRotReport()
	for _, rep := range reps {
		all.merge(rep)
	}
	r.calls, r.firstOther, r.revokedBy = all.Calls, all.FirstOther, all.Revoked
	for name, n := range all.Revoked {
		r.revokedErrs += n
		if h.srv.creds[name].revokedAt.IsZero() {
			r.revokedOnHealthy = append(r.revokedOnHealthy, name)
		}
	}
	for _, n := range all.Other {
		r.otherErrs += n
	}
	for _, n := range all.Expired {
		r.expiredErrs += n
	}
	owner := map[string]*rotCred{}
	for _, c := range h.srv.creds {
		for v := range c.access {
			owner[v] = c
		}
	}
	for v, seen := range all.Seen {
		r.tokens++
		if seen >= all.Expiry[v] {
			r.pastOwn++
			r.maxPastOwn = max(r.maxPastOwn, time.Duration(seen-all.Expiry[v]))
		}
		c := owner[v]
		if c == nil {
			r.unknown++
			continue
		}
		end := c.access[v]
		r.skews = append(r.skews, time.Duration(all.Expiry[v]-end))
		switch {
		case seen >= end:
			r.expired++
			r.lates = append(r.lates, time.Duration(seen-end))
			r.maxLate = max(r.maxLate, time.Duration(seen-end))
			if all.Expiry[v] > end {
				r.laterExpiry++
			}
		case !c.revokedAt.IsZero() && seen > c.revokedAt.UnixNano():
			r.deadFamily++
		}
	}
}

// rotKill is one kill: of pid, at, while the server served target.
type rotKill struct {
	pid    int
	at     time.Time
	target *redemption
	mode   string             // "uniform" or "after reply"
	redis  map[string]rotSnap // what Redis held right after the kill
}

// rotSnap is a credential's stored state: its refresh token's place in
// the family, and the access token.
type rotSnap struct {
	refresh int
	token   string
}

// phase says where kill k landed for red, a redemption of the killed
// process: (a) before the server acted (it may still have acted, if the
// request arrived or was acted on after the kill), (b) after it acted,
// before it replied, (c) after the reply, before the new refresh state
// reached Redis, (d) after that, before the access token did, (e) after
// both, or nothing to commit. Call it with srv.mu held.
func (h *rotHarness) phase(red *redemption, k *rotKill) string {
	switch {
	case red.arrived.After(k.at), red.acted.IsZero(), red.acted.After(k.at):
		return "a"
	case red.replied.IsZero(), red.replied.After(k.at):
		return "b"
	case red.outcome != outRotated && red.outcome != outGrace:
		return "e"
	}
	snap, ok := k.redis[red.cred]
	if !ok {
		return "e"
	}
	n := h.srv.creds[red.cred].index[red.next]
	switch {
	case snap.refresh < n:
		return "c"
	case snap.refresh == n && snap.token != red.token:
		return "d"
	}
	return "e"
}

// snapshot reads what Redis holds for every credential pid redeemed in
// the 2 s before at: pid is dead, and its locks keep the others out.
func (h *rotHarness) snapshot(pid int, at time.Time) map[string]rotSnap {
	h.srv.mu.Lock()
	names := map[string]bool{}
	for _, red := range h.srv.reqs {
		if red.pid == pid && !red.replied.IsZero() && red.replied.After(at.Add(-2*time.Second)) {
			names[red.cred] = true
		}
	}
	h.srv.mu.Unlock()
	ctx := context.Background()
	snaps := map[string]rotSnap{}
	for name := range names {
		st, err := h.creds[name].LoadRefresh(ctx)
		sh, terr := h.creds[name].Load(ctx)
		if errors.Is(terr, token.ErrNotFound) {
			terr = nil // expired: no access token
		}
		if err != nil || terr != nil {
			h.t.Errorf("%s after the kill: %v, %v", name, err, terr)
			continue
		}
		h.srv.mu.Lock()
		i, ok := h.srv.creds[name].index[st.Value]
		h.srv.mu.Unlock()
		if !ok {
			i = -1
		}
		snaps[name] = rotSnap{refresh: i, token: sh.Value}
	}
	return snaps
}

// await arms f and returns the redemption it landed on.
func (h *rotHarness) await(f *faultPlan) *redemption {
	h.t.Helper()
	h.srv.arm(f)
	select {
	case red := <-f.hit:
		return red
	case <-time.After(30 * time.Second):
		h.t.Fatal("no redemption to inject a fault into within 30s")
	}
	return nil
}

func randDur(d time.Duration) time.Duration { return rand.N(d + 1) }

// injectKill holds the next redemption a random time before and after the
// server acts, kills its process at a random point (uniform over the
// holds and 50 ms more, or within 3 ms of the reply, to land after it),
// reads Redis, and starts a new child in its place.
func (h *rotHarness) injectKill() *rotKill {
	t := h.t
	t.Helper()
	f := newFaultPlan(false, randDur(100*time.Millisecond), h.cfg.latency+randDur(150*time.Millisecond))
	red := h.await(f)
	k := &rotKill{pid: red.pid, target: red, mode: "uniform"}
	if rand.IntN(2) == 0 {
		k.mode = "after reply"
		select {
		case <-f.finished:
		case <-time.After(time.Minute):
			t.Fatal("the held redemption never ended")
		}
		time.Sleep(randDur(3 * time.Millisecond)) // the kill point
	} else {
		time.Sleep(time.Until(red.arrived.Add(randDur(f.pre + f.post + 50*time.Millisecond)))) // the kill point
	}
	in := h.byPid(red.pid)
	if in == nil {
		t.Fatalf("no live child has pid %d", red.pid)
	}
	k.at = time.Now()
	h.srv.markKilled(k.pid, k.at)
	in.kill()
	h.remove(in)
	k.redis = h.snapshot(k.pid, k.at)
	h.start()
	return k
}

// rotLoss is one injected lock loss.
type rotLoss struct {
	target  *redemption
	deleted bool   // the lock key was there to delete
	endedBy string // what ended the held reply
}

// injectLockLoss holds the next redemption's reply after the server acted,
// deletes its credential's lock in Redis, as if it had expired (the holder
// stalled, or a failover lost the key), and lets the reply go once another
// process redeems the same credential, or the holder's keep-alive gave up
// and the client went away, or 3 lock TTLs passed.
func (h *rotHarness) injectLockLoss(lockTTL time.Duration) rotLoss {
	t := h.t
	t.Helper()
	f := newFaultPlan(true, 0, 3*lockTTL)
	red := h.await(f)
	select {
	case <-f.acted:
	case <-f.finished:
		return rotLoss{target: red, endedBy: "gone before the server acted"}
	case <-time.After(time.Minute):
		t.Fatal("the server never acted on the held redemption")
	}
	key := "{" + h.prefix + red.cred + "}:lock" // the key layout of the package doc
	n, err := h.rdb.Del(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.finished:
	case <-time.After(time.Minute):
		t.Fatal("the held redemption never ended")
	}
	h.srv.mu.Lock()
	defer h.srv.mu.Unlock()
	ended := f.endedBy
	if ended == "" {
		ended = "timeout"
	}
	return rotLoss{target: red, deleted: n == 1, endedBy: ended}
}

// rotBase is the load of both tests: 8 processes × 64 goroutines on 100
// credentials over 20 lifetimes of 1 s access tokens, each caller pausing
// 100 ms between calls (some 5,000 calls a second in all: on 2 cores under
// the race detector, more starves the processes), a reply 10 ms after the
// server acts, default Options (LockTTL 2s; RefreshAhead 0.2 with its 1 s
// floor, capped at half the lifetime: a 1 s token is refreshed 0.5 s
// before it expires, 200 redemptions a second in all).
var rotBase = rotConfig{procs: 8, goroutines: 64, creds: 100, lifetimes: 20, lifetime: time.Second,
	latency: 10 * time.Millisecond, pace: 100 * time.Millisecond}

// rotMini is rotBase scaled to miniredis, which serves every process from
// this one: under the race detector it runs out of CPU at some 35
// redemptions a second (each costs some 150 commands, Lua mostly, from 8
// processes), so 10 credentials over 10 lifetimes.
var rotMini = rotConfig{procs: 8, goroutines: 64, creds: 10, lifetimes: 10, lifetime: time.Second,
	latency: 10 * time.Millisecond, pace: 100 * time.Millisecond}

const (
	rotLockTTL = 2 * time.Second // rediscache's default
	// rotGrace is the fault runs' reuse grace period: it must exceed the
	// longest a replaced refresh token waits to be redeemed again, the
	// lock TTL a killed refresher leaves behind plus the holds before the
	// kill (the grace-0 table reports it).
	rotGrace = 5 * time.Second
)

// rotBackend is a Redis the children share.
type rotBackend struct {
	name, addr string
	cfg        rotConfig
}

// rotRedis is a real server: TOKENCACHE_REDIS_ADDR, or a redis-server of the
// test's own, as the other process tests use; ok is false without either.
func rotRedis(t *testing.T) (rotBackend, bool) {
	if addr := os.Getenv(realRedisEnv); addr != "" {
		return rotBackend{"redis", addr, rotBase}, true
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return rotBackend{}, false
	}
	return rotBackend{"redis-server", startRedis(t).addr(), rotBase}, true
}

// TestRotatingRefreshProcesses: 8 OS processes × 64 goroutines, 100
// credentials with rotating refresh tokens and no reuse grace, 20 lifetimes
// of 1 s tokens. Each refresh token is redeemed once: one redemption per
// refresh period, no reuse, no revocation; the stored refresh state is the
// server's current one at every sample and at the end, under the
// generation of its place in the family; every access token handed out was
// issued, and within the expiry the Source reported; no caller error.
func TestRotatingRefreshProcesses(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	backends := []rotBackend{{"miniredis", mr.Addr(), rotMini}}
	if b, ok := rotRedis(t); ok {
		backends = append(backends, b)
	} else {
		t.Logf("no real Redis (%s, or redis-server on PATH): miniredis only", realRedisEnv)
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { rotClean(t, b) })
	}
}

func rotClean(t *testing.T, b rotBackend) {
	cfg := b.cfg
	h := newRotHarness(t, b.addr, cfg)
	ctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	gens := h.watchGenerations(ctx)
	start := time.Now()
	for range cfg.procs {
		h.start()
	}
	allRunning := time.Now()
	time.Sleep(time.Until(start.Add(time.Duration(cfg.lifetimes) * cfg.lifetime))) // the load runs
	stopped := time.Now()
	reps := h.stopAll()
	stopWatch()
	backwards := <-gens
	r := h.results(reps, nil, stopped)

	period := refreshPeriod(cfg.lifetime, 0) // lockloss_test.go: the lifetime less the refresh-ahead window
	ideal := 1 + int(stopped.Sub(start)/period)
	// At least one redemption per two lifetimes: the refreshes happened.
	// Fewer than one per lifetime is no failure in itself (callers wait for
	// an expired token's refresh, and errors are checked below); on 2
	// cores shared with other test runs the 200 redemptions a second fall
	// that far behind.
	least := int(stopped.Sub(allRunning) / (2 * cfg.lifetime))
	t.Logf("%s: %d processes × %d goroutines, %d credentials, %v tokens (refreshed every %v), %v of load (%v with every process running):\n"+
		"  redemptions per credential %d..%d (ideal at most %d; at least %d asserted), %d in all; reuses %d, revocations %d\n"+
		"  lost refresh states %d (%d at shutdown), stored states out of place %d\n"+
		"  calls %d, errors %d; access tokens handed out %d: unknown %d, past the Source's own ExpiresAt %d (at most %v)\n"+
		"  %s",
		b.name, cfg.procs, cfg.goroutines, cfg.creds, cfg.lifetime, period, stopped.Sub(start).Round(time.Millisecond),
		stopped.Sub(allRunning).Round(time.Millisecond), r.minRed, r.maxRed, ideal, least, r.total, r.graceHits+r.revocations,
		r.revocations, len(r.lost), len(r.lostAtShutdown), len(backwards), r.calls, r.otherErrs+r.revokedErrs+r.expiredErrs,
		r.tokens, r.unknown, r.pastOwn, r.maxPastOwn.Round(time.Millisecond), r.expiryLine())
	if r.maxRed > ideal+1 || r.minRed < least {
		t.Errorf("redemptions per credential %d..%d; want %d..%d (one per %v refresh period, +1 for one in flight at the end)",
			r.minRed, r.maxRed, least, ideal+1, period)
	}
	if r.graceHits+r.revocations != 0 {
		t.Errorf("%d refresh tokens redeemed twice (%d revocations): %v", r.graceHits+r.revocations, r.revocations, r.unexplained)
	}
	if len(r.lost)+len(r.lostAtShutdown) != 0 {
		t.Errorf("refresh states lost: %v; at shutdown: %v", r.lost, r.lostAtShutdown)
	}
	if len(backwards) != 0 {
		t.Errorf("stored refresh states: %v", backwards)
	}
	if n := r.otherErrs + r.revokedErrs + r.expiredErrs; n != 0 {
		t.Errorf("callers: %d errors (first: %s)", n, r.firstOther)
	}
	r.checkHandOuts(t, cfg.lifetime)
}

// strictExpiryEnv makes checkHandOuts require that no call is handed a
// token after its expiry, the server's or the Source's own. Off by
// default: two library issues make a few late under load (see
// checkHandOuts).
const strictExpiryEnv = "TOKENCACHE_STRICT_EXPIRY"

// checkHandOuts checks the access tokens callers were handed: every one
// issued by the server, none handed out by a call that started a lifetime
// after the ExpiresAt the Source reported with it, or two lifetimes after
// the server's expiry (a refresh missed, not a late one). Less is reported:
// the Source counts a token's Redis TTL from when the reply arrives, so its
// ExpiresAt is later than the server's by a round trip, hundreds of ms on
// 2 starved cores; and a caller that joins a refresh is handed the
// refresh's token without a check that it is still valid.
func (r *rotResults) checkHandOuts(t *testing.T, lifetime time.Duration) {
	t.Helper()
	own, server := lifetime, 2*lifetime
	if os.Getenv(strictExpiryEnv) != "" {
		own, server = 0, 0
	}
	if r.unknown > 0 {
		t.Errorf("callers were handed %d tokens the server never issued", r.unknown)
	}
	if r.pastOwn > 0 && r.maxPastOwn >= own {
		t.Errorf("%d tokens handed out after the ExpiresAt the Source reported, at most %v after; want none %v after", r.pastOwn, r.maxPastOwn, own)
	}
	if r.expired > 0 && r.maxLate >= server {
		t.Errorf("%d tokens handed out after the server's expiry, at most %v after; want none %v after", r.expired, r.maxLate, server)
	}
}

// expiryLine reports the access tokens handed out after the server's
// expiry, and how much later than the server's the Source's ExpiresAt was.
func (r *rotResults) expiryLine() string {
	slices.Sort(r.skews)
	slices.Sort(r.lates)
	pct := func(d []time.Duration, p int) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[min(len(d)-1, len(d)*p/100)].Round(time.Millisecond)
	}
	return fmt.Sprintf("past the server's expiry %d (of which the Source reported a later ExpiresAt %d), at most %v late (p50 %v); "+
		"the Source's ExpiresAt minus the server's: p50 %v, p90 %v, p99 %v, max %v",
		r.expired, r.laterExpiry, pct(r.lates, 100), pct(r.lates, 50),
		pct(r.skews, 50), pct(r.skews, 90), pct(r.skews, 99), pct(r.skews, 100))
}

// TestRotatingRefreshFaults: the load of TestRotatingRefreshProcesses on a
// real Redis, while the test kills (SIGKILL) the process whose redemption
// the server holds, at random points, and deletes the refresh lock of a
// redemption the server holds after acting on it (a lock lost
// mid-redemption), then runs fault-free for a lock TTL and two lifetimes;
// once without a reuse grace period, once with rotGrace. It reports where
// the kills landed and what they cost. With the grace period nothing is
// revoked; without, every reuse comes from a kill before the new refresh
// state reached Redis, or from a lock loss. Either way: a revoked family is
// not redeemed in a loop, its callers get ErrRefreshRevoked, no refresh
// state is lost or overwritten by an older one.
//
// 4 kills and 2 lock losses per grace setting; TOKENCACHE_MEASURE=1 makes
// it 24 and 8.
func TestRotatingRefreshFaults(t *testing.T) {
	b, ok := rotRedis(t)
	if !ok {
		t.Skipf("needs a real Redis: %s, or redis-server on PATH", realRedisEnv)
	}
	kills, losses := 4, 2
	if os.Getenv(measureEnv) != "" {
		kills, losses = 24, 8
	}
	var rows []rotRow
	for _, grace := range []time.Duration{0, rotGrace} {
		t.Run("grace "+grace.String(), func(t *testing.T) {
			rows = append(rows, rotFaults(t, b.addr, grace, kills, losses))
		})
	}
	t.Logf("%s, %d processes × %d goroutines, %d credentials, %v tokens, LockTTL %v, reply %v after the server acts (kill targets: held %v..%v before and %v..%v after):\n%s",
		b.name, rotBase.procs, rotBase.goroutines, rotBase.creds, rotBase.lifetime, rotLockTTL, rotBase.latency,
		time.Duration(0), 100*time.Millisecond, rotBase.latency, rotBase.latency+150*time.Millisecond, rotTable(rows))
}

func rotFaults(t *testing.T, addr string, grace time.Duration, kills, losses int) rotRow {
	cfg := rotBase
	cfg.grace = grace
	h := newRotHarness(t, addr, cfg)
	ctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	gens := h.watchGenerations(ctx)
	for range cfg.procs {
		h.start()
	}
	time.Sleep(2 * cfg.lifetime) // load before the first fault
	killed, lost := h.injectFaults(kills, losses)
	time.Sleep(rotLockTTL + 2*cfg.lifetime) // fault-free: every family is redeemed again
	stopped := time.Now()
	reps := h.stopAll()
	stopWatch()
	backwards := <-gens
	r := h.results(reps, killed, stopped)
	row := h.row(grace, killed, lost, &r, backwards)
	if len(r.unexplained) > 0 {
		t.Errorf("reuses no fault explains: %s", strings.Join(r.unexplained, "; "))
	}
	if grace > 0 && r.revocations > 0 {
		t.Errorf("%d revocations within a %v grace period (longest reuse %v after the rotation)", r.revocations, grace, r.maxReuseDelay)
	}
	if r.afterRevocation > 2 {
		t.Errorf("a revoked family was redeemed %d more times; want at most 2 (the shared backoff is permanent)", r.afterRevocation)
	}
	for _, name := range r.revoked {
		if r.revokedBy[name] == 0 {
			t.Errorf("%s was revoked, but no caller got ErrRefreshRevoked", name)
		}
	}
	if len(r.revokedOnHealthy)+len(r.lost)+len(r.lostAtShutdown)+len(backwards) > 0 {
		t.Errorf("ErrRefreshRevoked on families never revoked: %v; lost refresh states: %v (at shutdown %v); stored states: %v",
			r.revokedOnHealthy, r.lost, r.lostAtShutdown, backwards)
	}
	r.checkHandOuts(t, cfg.lifetime)
	if r.otherErrs > 0 {
		t.Errorf("%d caller errors other than ErrRefreshRevoked; first: %s", r.otherErrs, r.firstOther)
	}
	h.checkRevoked(r.revoked)
	return row
}

// injectFaults injects kills and lock losses in random order, one at a
// time, and returns the kills by pid.
func (h *rotHarness) injectFaults(kills, losses int) (map[int]*rotKill, []rotLoss) {
	order := make([]bool, kills+losses) // true: a lock loss
	for i := range losses {
		order[i] = true
	}
	rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	killed := map[int]*rotKill{}
	var lost []rotLoss
	for _, loss := range order {
		if loss {
			lost = append(lost, h.injectLockLoss(rotLockTTL))
			continue
		}
		k := h.injectKill()
		killed[k.pid] = k
	}
	return killed, lost
}

// checkRevoked asks a Source of the test's own for each revoked
// credential: it must get ErrRefreshRevoked from the shared backoff,
// without asking the server.
func (h *rotHarness) checkRevoked(names []string) {
	c := newCache(h.t, h.rdb, rediscache.Options{Prefix: h.prefix, Source: token.Options{Logger: quiet}})
	for _, name := range names {
		src, err := c.Source(name, tokentest.HTTPRedeemer(h.url+"/"+name, nil))
		if err != nil {
			h.t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = src.Token(ctx)
		cancel()
		_ = src.Close()
		if !errors.Is(err, token.ErrRefreshRevoked) {
			h.t.Errorf("a new Source of revoked %s: %v, want ErrRefreshRevoked", name, err)
		}
	}
	h.srv.mu.Lock()
	defer h.srv.mu.Unlock()
	for _, red := range h.srv.reqs {
		if red.pid == 0 {
			h.t.Errorf("the test's Source of revoked %s asked the server", red.cred)
		}
	}
}

// rotRow is one grace setting's column of the faults table.
type rotRow struct {
	grace time.Duration
	cells map[string]string
}

// rotMetrics are the table's rows, in order.
var rotMetrics = []string{
	"kills (kill point)", "kill landed (a b c d e)", "other redemptions caught (b c d, a acted after)",
	"lock losses injected", "held reply ended by", "redemptions (per credential)",
	"reuses within grace", "revocations", "reuses by cause", "longest reuse after its rotation",
	"credentials left revoked", "most redemptions after a revocation", "callers' ErrRefreshRevoked",
	"callers' errors after an expired reply", "other caller errors", "lost refresh states", "stored states out of place",
	"tokens handed out", "... unknown / past Source's ExpiresAt", "... past server's expiry / its family's revocation",
}

// landings counts where the kills landed: for their targets, and for the
// other redemptions of the killed processes that a kill can cost.
func (h *rotHarness) landings(killed map[int]*rotKill) (target, other map[string]int, modes map[string]int) {
	target, other, modes = map[string]int{}, map[string]int{}, map[string]int{}
	for _, k := range killed {
		target[h.phase(k.target, k)]++
		modes[k.mode]++
		for _, red := range h.srv.reqs {
			if red.pid != k.pid || red == k.target {
				continue
			}
			switch ph := h.phase(red, k); {
			case ph == "a" && !red.acted.IsZero():
				other["a"]++
			case ph == "b", ph == "c", ph == "d":
				other[ph]++
			}
		}
	}
	return target, other, modes
}

func (h *rotHarness) row(grace time.Duration, killed map[int]*rotKill, lost []rotLoss, r *rotResults, backwards []string) rotRow {
	h.srv.mu.Lock()
	target, other, modes := h.landings(killed)
	h.srv.mu.Unlock()
	ended, deleted := map[string]int{}, 0
	for _, l := range lost {
		ended[l.endedBy]++
		if l.deleted {
			deleted++
		}
	}
	var causes []string
	for c, n := range r.causes {
		causes = append(causes, fmt.Sprintf("%s %d", c, n))
	}
	slices.Sort(causes)
	return rotRow{grace: grace, cells: map[string]string{
		"kills (kill point)":                                 fmt.Sprintf("%d (uniform %d, after reply %d)", len(killed), modes["uniform"], modes["after reply"]),
		"kill landed (a b c d e)":                            fmt.Sprintf("%d %d %d %d %d", target["a"], target["b"], target["c"], target["d"], target["e"]),
		"other redemptions caught (b c d, a acted after)":    fmt.Sprintf("%d %d %d, %d", other["b"], other["c"], other["d"], other["a"]),
		"lock losses injected":                               fmt.Sprintf("%d (lock key deleted %d)", len(lost), deleted),
		"held reply ended by":                                rotCounts(ended),
		"redemptions (per credential)":                       fmt.Sprintf("%d (%d..%d)", r.total, r.minRed, r.maxRed),
		"reuses within grace":                                strconv.Itoa(r.graceHits),
		"revocations":                                        strconv.Itoa(r.revocations),
		"reuses by cause":                                    strings.Join(causes, ", "),
		"longest reuse after its rotation":                   r.maxReuseDelay.Round(time.Millisecond).String(),
		"credentials left revoked":                           strconv.Itoa(len(r.revoked)),
		"most redemptions after a revocation":                strconv.Itoa(r.afterRevocation),
		"callers' ErrRefreshRevoked":                         strconv.FormatInt(r.revokedErrs, 10),
		"callers' errors after an expired reply":             strconv.FormatInt(r.expiredErrs, 10),
		"other caller errors":                                strconv.FormatInt(r.otherErrs, 10),
		"lost refresh states":                                strconv.Itoa(len(r.lost) + len(r.lostAtShutdown)),
		"stored states out of place":                         strconv.Itoa(len(backwards)),
		"tokens handed out":                                  strconv.Itoa(r.tokens),
		"... unknown / past Source's ExpiresAt":              fmt.Sprintf("%d / %d (at most %v)", r.unknown, r.pastOwn, r.maxPastOwn.Round(time.Millisecond)),
		"... past server's expiry / its family's revocation": fmt.Sprintf("%d (at most %v) / %d", r.expired, r.maxLate.Round(time.Millisecond), r.deadFamily),
	}}
}

func rotCounts(m map[string]int) string {
	var parts []string
	for k, n := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// rotTable lays the rows out as columns.
func rotTable(rows []rotRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  %-52s", "grace")
	for _, r := range rows {
		fmt.Fprintf(&b, " | %-44s", r.grace)
	}
	for _, m := range rotMetrics {
		fmt.Fprintf(&b, "\n  %-52s", m)
		for _, r := range rows {
			fmt.Fprintf(&b, " | %-44s", r.cells[m])
		}
	}
	return b.String()
}
