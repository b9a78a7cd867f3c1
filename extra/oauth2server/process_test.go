package oauth2server_test

// The harness of the multi-process tests (issue 14): child processes are
// this test binary re-executed with procChildEnv set; they share one real
// Redis and reach fosite through a proxy of the test's, which counts token
// requests per client and, for refresh tokens, records each redemption and
// can hold it (ccprocess_test.go, rotprocess_test.go). It is a compact copy
// of the core module's rediscache/rotating_process_test.go.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	procChildEnv = "TOKENCACHE_OAUTHPROC_CHILD" // "cc" or "rot"
	procConfEnv  = "TOKENCACHE_OAUTHPROC_CONF"  // the child's procConf, JSON
	redisAddrEnv = "TOKENCACHE_REDIS_ADDR"
	measureEnv   = "TOKENCACHE_MEASURE"
	pidHeader    = "X-Test-Pid"
)

// init runs before the tests: a child never reaches them.
func init() {
	switch os.Getenv(procChildEnv) {
	case "":
		return
	case "cc":
		os.Exit(runChild(ccChild))
	case "rot":
		os.Exit(runChild(rotChild))
	}
	os.Exit(2)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// procConf is what a child is told.
type procConf struct {
	Redis, Prefix, TokenURL string
	Clients                 map[string]string // client ID → secret
	Scopes                  []string
	Users                   []string // rot: the users (credential names come from oauth.UserName)
	Goroutines              int
	PaceMin, PaceMax        time.Duration // a caller's pause between calls
	SlowPace                time.Duration // cc: the pause of the modes that fetch on every call
	MinRefreshAhead         time.Duration
	EarlyExpiry             time.Duration // cc: ReuseTokenSourceWithExpiry's
}

func (c *procConf) pace() time.Duration {
	return c.PaceMin + rand.N(c.PaceMax-c.PaceMin+1)
}

// runChild reads its procConf, calls start, prints "ready", runs load on
// a "go" line until a "stop" line (or end of input), prints "report
// <json>" and calls the closer start returned at end of input: the parent
// closes input only once no redemption is in flight.
func runChild(start func(ctx context.Context, c *procConf) (load func(context.Context) any, closeAll func(), err error)) int {
	var c procConf
	if err := json.Unmarshal([]byte(os.Getenv(procConfEnv)), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	load, closeAll, err := start(ctx, &c)
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
	b, err := json.Marshal(load(ctx))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("report %s\n", b)
	<-eof
	return 0
}

// pidClient is an HTTP client that sends the process's pid with every
// request, so that the proxy knows whose request it holds.
func pidClient() *http.Client {
	return &http.Client{Transport: pidTransport{base: &http.Transport{MaxIdleConnsPerHost: 256}, pid: strconv.Itoa(os.Getpid())}}
}

type pidTransport struct {
	base http.RoundTripper
	pid  string
}

func (p pidTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set(pidHeader, p.pid)
	return p.base.RoundTrip(req)
}

// child is one child process, seen from the test.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *lockedBuffer
	ready  chan struct{}
	report chan []byte // receives the report's JSON, if any
	eof    chan struct{}
	once   sync.Once
}

func (ch *child) pid() int         { return ch.cmd.Process.Pid }
func (ch *child) send(line string) { _, _ = io.WriteString(ch.stdin, line+"\n") }

// kill sends SIGKILL (if the process still runs) and reaps it.
func (ch *child) kill() {
	ch.once.Do(func() {
		_ = ch.cmd.Process.Kill()
		<-ch.eof
		_ = ch.cmd.Wait()
	})
}

// startChild runs a child of kind with conf, waits until it is ready and
// starts its load.
func startChild(t *testing.T, kind string, conf *procConf) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(conf)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), procChildEnv+"="+kind, procConfEnv+"="+string(b))
	ch := &child{cmd: cmd, stderr: new(lockedBuffer), ready: make(chan struct{}), report: make(chan []byte, 1), eof: make(chan struct{})}
	cmd.Stderr = ch.stderr
	if ch.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(ch.eof)
		r := bufio.NewReaderSize(out, 1<<20)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			kind, rest, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
			switch kind {
			case "ready":
				close(ch.ready)
			case "report":
				ch.report <- []byte(rest)
			}
		}
	}()
	t.Cleanup(func() {
		ch.kill()
		if s := ch.stderr.String(); t.Failed() && s != "" {
			t.Logf("child %d stderr (tail):\n%s", ch.pid(), s[max(0, len(s)-2000):])
		}
	})
	select {
	case <-ch.ready:
	case <-ch.eof:
		t.Fatalf("child exited: %s", ch.stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("child did not start")
	}
	ch.send("go")
	return ch
}

// stopChildren stops the children's load and returns their reports; then
// waits for quiesce, closes their input and waits for them to exit.
func stopChildren(t *testing.T, children []*child, quiesce func()) [][]byte {
	t.Helper()
	for _, ch := range children {
		ch.send("stop")
	}
	var reps [][]byte
	for _, ch := range children {
		select {
		case rep := <-ch.report:
			reps = append(reps, rep)
		case <-ch.eof:
			t.Fatalf("child %d exited without a report: %s", ch.pid(), ch.stderr.String())
		case <-time.After(time.Minute):
			t.Fatalf("child %d did not report", ch.pid())
		}
	}
	if quiesce != nil {
		quiesce()
	}
	for _, ch := range children {
		_ = ch.stdin.Close()
	}
	for _, ch := range children {
		<-ch.eof
		if err := ch.cmd.Wait(); err != nil {
			t.Errorf("child %d: %v: %s", ch.pid(), err, ch.stderr.String())
		}
		ch.once.Do(func() {})
	}
	return reps
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// realRedis returns TOKENCACHE_REDIS_ADDR, or starts a redis-server of the
// test's own; it skips the test without either.
func realRedis(t *testing.T) string {
	t.Helper()
	if addr := os.Getenv(redisAddrEnv); addr != "" {
		return addr
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skipf("needs a real Redis: %s, or redis-server on PATH", redisAddrEnv)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + port
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); c.Ping(context.Background()).Err() != nil; {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not start")
		}
		time.Sleep(10 * time.Millisecond) // polling the server's start
	}
	return addr
}

// testPrefix is a key prefix of this run's own.
func testPrefix(t *testing.T) string {
	return fmt.Sprintf("oauthproc:%s:%d:", strings.NewReplacer("/", ".", " ", "_").Replace(t.Name()), time.Now().UnixNano())
}

// upstreamReply is a token reply as the proxy reads it.
type upstreamReply struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    int64  `json:"expires_in"`
	Error        string `json:"error"`
}

// proxy is the token endpoint the children use: it forwards each request
// to fosite and returns fosite's reply. Client-credentials requests are
// counted per client; refresh-token requests go through rot (which may
// hold them), if set.
type proxy struct {
	upstream string // fosite's token endpoint
	hc       *http.Client
	URL      string // the proxy's token endpoint

	mu sync.Mutex
	cc map[string]*ccCount // per client ID

	rot *rotProxy
}

type ccCount struct {
	requests, issued int
	expiresIn        int64 // sum over the tokens issued, seconds
}

func newProxy(t *testing.T, upstream string) *proxy {
	p := &proxy{upstream: upstream, hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}, cc: map[string]*ccCount{}}
	hs := httptest.NewServer(p)
	t.Cleanup(hs.Close)
	p.URL = hs.URL + "/token"
	return p
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.PostForm.Get("grant_type") == "refresh_token" && p.rot != nil {
		p.rot.serve(w, r)
		return
	}
	code, body, err := p.forward(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	id, _, _ := r.BasicAuth()
	var rep upstreamReply
	_ = json.Unmarshal(body, &rep)
	p.mu.Lock()
	c := p.cc[id]
	if c == nil {
		c = &ccCount{}
		p.cc[id] = c
	}
	c.requests++
	if code == http.StatusOK {
		c.issued++
		c.expiresIn += rep.ExpiresIn
	}
	p.mu.Unlock()
	writeReply(w, code, body)
}

// forward sends r's form to fosite, with a context of its own: once sent,
// fosite acts on it whatever the client does.
func (p *proxy) forward(r *http.Request) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, p.upstream, strings.NewReader(r.PostForm.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", r.Header.Get("Authorization"))
	resp, err := p.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func writeReply(w http.ResponseWriter, code int, body []byte) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(code)
	_, _ = w.Write(body)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

func (p *proxy) counts(id string) ccCount {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.cc[id]; c != nil {
		return *c
	}
	return ccCount{}
}

// measure reports whether the full-size measurement was asked for.
func measure() bool { return os.Getenv(measureEnv) == "1" }
