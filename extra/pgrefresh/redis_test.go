package pgrefresh_test

// Redis loses data, PostgreSQL keeps the refresh state: instances share
// tokens through a redis-server the test owns (no persistence), with their
// refresh state in the test's PostgreSQL, while Redis is flushed and
// killed. Without redis-server the tests skip, unless CI or
// TOKENCACHE_REQUIRE_PG=1 says they must run.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/extra/pgrefresh"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// redisServer is a redis-server the test starts, kills and starts again
// on the same port, empty each time: --save "" --appendonly no.
type redisServer struct {
	t    *testing.T
	port int
	dir  string
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd has exited
}

// startRedis starts a redis-server on a free loopback port, killed when
// the test ends.
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if !pgRequired() {
			t.Skipf("no redis-server on PATH (CI or %s=1 makes this a failure)", requireEnv)
		}
		t.Fatalf("no redis-server on PATH; CI or %s=1 requires these tests to run", requireEnv)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &redisServer{t: t, port: port, dir: t.TempDir()}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// start runs redis-server and waits until it answers PING.
func (r *redisServer) start() {
	r.t.Helper()
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port),
		"--save", "", "--appendonly", "no", "--dir", r.dir)
	// Killed with the test process, should it die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.cmd, r.exit = cmd, make(chan struct{})
	go func(exit chan struct{}) { _ = cmd.Wait(); close(exit) }(r.exit)
	deadline := time.Now().Add(10 * time.Second)
	for !r.answers() { // polling the server's start
		select {
		case <-r.exit:
			r.t.Fatalf("redis-server exited: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatal("redis-server did not answer PING within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// answers reports whether the server answers PING, on a connection of its
// own: a client's pool would back off between failed dials.
func (r *redisServer) answers() bool {
	conn, err := net.DialTimeout("tcp", r.addr(), time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 7)
	_, err = conn.Write([]byte("PING\r\n"))
	if err == nil {
		_, err = io.ReadFull(conn, buf)
	}
	return err == nil && string(buf) == "+PONG\r\n"
}

// kill stops the server with SIGKILL, as a crash does, and waits.
func (r *redisServer) kill() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exit
	r.cmd = nil
}

// tracked is a rotating upstream that remembers the last refresh token it
// issued and when it issued each access token.
type tracked struct {
	*tokentest.Rotating
	mu      sync.Mutex
	current string               // the family's current refresh token
	issued  map[string]time.Time // access token → when issued
}

// Redeem implements token.Redeemer.
func (u *tracked) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	tok, next, err := u.Rotating.Redeem(ctx, refresh)
	if err == nil {
		u.mu.Lock()
		u.current, u.issued[tok.Value] = next, time.Now()
		u.mu.Unlock()
	}
	return tok, next, err
}

func (u *tracked) issuedAt(access string) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	at, ok := u.issued[access]
	return at, ok
}

func (u *tracked) currentRefresh() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.current
}

// newTracked starts a family (Grace 0: redeeming a replaced refresh token
// revokes it) and returns its upstream and first refresh token.
func newTracked(lifetime time.Duration) (*tracked, string) {
	u := &tracked{Rotating: tokentest.NewRotating(lifetime), issued: map[string]time.Time{}}
	u.current = u.Authorize()
	return u, u.current
}

// redisOptions are the instances' client options: go-redis's default
// timeouts (dial 5s, read 3s, 3 retries), and ContextTimeoutEnabled as
// package rediscache recommends.
func redisOptions(addr string) *redis.Options {
	return &redis.Options{Addr: addr, ContextTimeoutEnabled: true}
}

// noRefreshInFlight runs fn while no instance holds a refresh lock and none
// can take one: fn's fault then lands between redemptions. A fault during
// one (the lock lost while the upstream has replaced the state, before
// the commit) can let a second instance redeem the replaced state: see
// TestFlushDuringRedemption. Writes are paused (CLIENT PAUSE WRITE) and
// the locks read; the pause ends when fn returns, unless fn reports that
// it killed the server.
func noRefreshInFlight(t *testing.T, admin *redis.Client, fn func() (killed bool)) {
	t.Helper()
	ctx := t.Context()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := admin.Do(ctx, "CLIENT", "PAUSE", 5000, "WRITE").Err(); err != nil {
			t.Fatal(err)
		}
		locks, err := admin.Keys(ctx, "*:lock").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(locks) == 0 {
			if !fn() {
				if err := admin.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
					t.Fatal(err)
				}
			}
			return
		}
		if err := admin.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("a refresh lock was held at every look for 10s: %v", locks)
		}
		time.Sleep(2 * time.Millisecond) // polling for a gap between refreshes
	}
}

// flushAllScript flushes Redis unless a refresh lock is held (0): checked
// and flushed in one atomic step, as CLIENT PAUSE would pause the FLUSHALL.
var flushAllScript = redis.NewScript(`
if #redis.call('KEYS', '*:lock') > 0 then return 0 end
redis.call('FLUSHALL')
return 1
`)

// flushBetweenRefreshes runs FLUSHALL at a moment no refresh lock is held.
func flushBetweenRefreshes(t *testing.T, admin *redis.Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := flushAllScript.Run(t.Context(), admin, nil).Int()
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a refresh lock was held at every look for 10s")
		}
		time.Sleep(2 * time.Millisecond) // polling for a gap between refreshes
	}
}

// logBuf collects a JSON logger's records; safe for concurrent use.
type logBuf struct {
	mu sync.Mutex
	b  []byte
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *logBuf) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// count counts the records at level whose message holds substr.
func (l *logBuf) count(level, substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for line := range strings.Lines(string(l.b)) {
		var rec struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Level == level && strings.Contains(rec.Msg, substr) {
			n++
		}
	}
	return n
}

// rig runs instances that serve several credentials, each credential's
// refresh state in PostgreSQL, their tokens in one Redis.
type rig struct {
	t      *testing.T
	addr   string
	stores []*pgrefresh.Store
	names  []string
	ups    []*tracked
	srcs   [][]*token.Source // [instance][credential]
	logs   logBuf

	stop     chan struct{}
	wg       sync.WaitGroup
	haltOnce sync.Once
	mu       sync.Mutex
	calls    int
	errs     []callerErr
}

type callerErr struct {
	at   time.Time
	cred int
	err  error
}

// newRig seeds creds credentials and starts instances, each with a Redis
// client of its own and a Cache per credential whose Source options name
// that credential's PostgreSQL state as the RefreshStore.
func newRig(t *testing.T, addr string, instances, creds int, lifetime time.Duration) *rig {
	r := &rig{t: t, addr: addr, stores: stores(t, pgrefresh.Options{}), stop: make(chan struct{})}
	first := make([]string, creds)
	for j := range creds {
		r.names = append(r.names, uniqueName("flush"))
		var up *tracked
		up, first[j] = newTracked(lifetime)
		r.ups = append(r.ups, up)
	}
	for i := range instances {
		r.srcs = append(r.srcs, r.instance(i))
	}
	for j := range creds {
		if err := r.srcs[0][j].SeedRefresh(t.Context(), first[j]); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// instance returns the Sources of a new instance (number i: its pool).
func (r *rig) instance(i int) []*token.Source {
	t := r.t
	rdb := redis.NewClient(redisOptions(r.addr))
	t.Cleanup(func() { _ = rdb.Close() })
	var srcs []*token.Source
	for j, name := range r.names {
		cache, err := rediscache.New(rdb, rediscache.Options{
			Prefix:        "tcpg:",
			Source:        token.Options{Logger: r.logs.logger()},
			RefreshStores: r.stores[i%len(r.stores)].RefreshStore,
		})
		if err != nil {
			t.Fatal(err)
		}
		s, err := cache.Source(name, r.ups[j])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		srcs = append(srcs, s)
	}
	return srcs
}

// run starts goroutines per instance that ask for every credential's
// token in turn until halt.
func (r *rig) run(goroutines int) {
	for _, srcs := range r.srcs {
		for range goroutines {
			r.wg.Go(func() { r.serve(srcs) })
		}
	}
	r.t.Cleanup(r.halt) // before the Sources close
}

func (r *rig) serve(srcs []*token.Source) {
	for {
		for j, s := range srcs {
			select {
			case <-r.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			tok, err := s.Token(ctx)
			cancel()
			if err == nil && !strings.HasPrefix(tok.Value, "at-") {
				err = errors.New("not an access token of the upstream")
			}
			r.mu.Lock()
			r.calls++
			if err != nil {
				r.errs = append(r.errs, callerErr{time.Now(), j, err})
			}
			r.mu.Unlock()
			time.Sleep(3 * time.Millisecond) // a caller's pace, not synchronisation
		}
	}
}

func (r *rig) halt() {
	r.haltOnce.Do(func() {
		close(r.stop)
		r.wg.Wait()
	})
}

// errorsBetween returns the callers' errors in [from, to).
func (r *rig) errorsBetween(from, to time.Time) []callerErr {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []callerErr
	for _, e := range r.errs {
		if !e.at.Before(from) && e.at.Before(to) {
			out = append(out, e)
		}
	}
	return out
}

// waitRedemptions waits until every credential's upstream has seen at
// least want[j] redemptions.
func (r *rig) waitRedemptions(want []int, within time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for j, up := range r.ups {
		for up.Redemptions() < want[j] { // polling the upstream's count
			if time.Now().After(deadline) {
				r.t.Fatalf("credential %d: %d redemptions after %v; want %d", j, up.Redemptions(), within, want[j])
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (r *rig) redemptions() []int {
	n := make([]int, len(r.ups))
	for j, up := range r.ups {
		n[j] = up.Redemptions()
	}
	return n
}

// probe starts a new instance and measures, per credential, how long its
// first valid token takes. The token must have been issued after since:
// the one Redis held before was lost, so it was redeemed again.
func (r *rig) probe(since time.Time, bound time.Duration) time.Duration {
	r.t.Helper()
	var worst time.Duration
	for j, s := range r.instance(len(r.srcs)) {
		start := time.Now()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			tok, err := s.Token(ctx)
			cancel()
			if err == nil {
				at, ok := r.ups[j].issuedAt(tok.Value)
				if !ok || !at.After(since) || !r.ups[j].Valid(tok.Value) {
					r.t.Errorf("credential %d: a new instance got a token issued %v (known %v), valid %v; want one redeemed after the fault",
						j, at.Sub(since), ok, r.ups[j].Valid(tok.Value))
				}
				break
			}
			if time.Since(start) > bound {
				r.t.Fatalf("credential %d: a new instance got no token within %v: %v", j, bound, err)
			}
			time.Sleep(5 * time.Millisecond) // polling the new instance
		}
		worst = max(worst, time.Since(start))
		_ = s.Close()
	}
	return worst
}

// checkState checks, between refreshes, that each credential's state in
// PostgreSQL is its upstream family's current refresh token, and that no
// family was revoked.
func (r *rig) checkState(admin *redis.Client, when string) {
	r.t.Helper()
	noRefreshInFlight(r.t, admin, func() bool {
		for j, name := range r.names {
			st, err := credential(r.t, r.stores[0], name).LoadRefresh(r.t.Context())
			if err != nil || st.Value != r.ups[j].currentRefresh() {
				r.t.Errorf("%s: credential %d: PostgreSQL holds generation %d (%v), not the upstream's current refresh token", when, j, st.Generation, err)
			}
		}
		return false
	})
	for j, up := range r.ups {
		if n := up.Revocations(); n != 0 {
			r.t.Errorf("%s: credential %d: %d revocations", when, j, n)
		}
	}
}

// survive injects a fault, measures how long a new instance takes to get
// a token, serves one lifetime more, and checks the callers and the state.
func (r *rig) survive(admin *redis.Client, name string, bound time.Duration, inject func() time.Time, lifetime time.Duration) {
	t := r.t
	t.Helper()
	before := r.redemptions()
	at := inject()
	up := time.Now()
	rec := r.probe(at, bound)
	recovered := time.Now()
	// One lifetime more of service: every credential refreshed again.
	want := r.redemptions()
	for j := range want {
		want[j]++
	}
	r.waitRedemptions(want, 2*lifetime)
	if errs := r.errorsBetween(recovered, time.Now()); len(errs) > 0 {
		t.Errorf("%s: %d caller errors after recovery, the first (credential %d): %v", name, len(errs), errs[0].cred, errs[0].err)
	}
	during := r.errorsBetween(at, recovered)
	r.checkState(admin, "after "+name)
	t.Logf("%s: Redis answered %v after the fault; a new instance's first token took %v (bound %v); caller errors until then: %d; redemptions %v → %v",
		name, up.Sub(at).Round(time.Millisecond), rec.Round(time.Millisecond), bound, len(during), before, r.redemptions())
}

// checkChain checks, once the instances stopped, that no commit failed and
// that the upstream accepts what PostgreSQL holds: the chain is unbroken.
func (r *rig) checkChain() {
	t := r.t
	t.Helper()
	if n := r.logs.count("ERROR", "could not commit"); n > 0 {
		t.Errorf("%d refresh states could not be committed", n)
	}
	for j, name := range r.names {
		st, err := credential(t, r.stores[0], name).LoadRefresh(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.ups[j].Rotating.Redeem(t.Context(), st.Value); err != nil {
			t.Errorf("credential %d: the upstream refuses the state PostgreSQL holds: %v", j, err)
		}
	}
}

// TestRedisLossKeepsRefreshState: 4 instances × 8 goroutines serve 3
// credentials whose refresh state is in PostgreSQL, while Redis is
// flushed, then killed (SIGKILL) and started again empty. Each time the
// access tokens are lost (a new instance's token is redeemed after the
// fault), the refresh state is not: PostgreSQL holds each family's current
// refresh token, no family is revoked, a new instance has a token within
// the bound, and no caller fails once it has.
func TestRedisLossKeepsRefreshState(t *testing.T) {
	const (
		instances, goroutines, creds = 4, 8, 3
		lifetime                     = 3 * time.Second // refreshed every 2s (1s ahead)
		// The bounds for a new instance's first token: a redemption and a
		// commit after a flush; after a restart also the instances'
		// reconnection (go-redis default timeouts, 3 retries).
		flushBound, restartBound = 2 * time.Second, 5 * time.Second
	)
	srv := startRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.addr()})
	t.Cleanup(func() { _ = admin.Close() })
	r := newRig(t, srv.addr(), instances, creds, lifetime)
	r.run(goroutines)
	// Mid-run: every credential refreshed at least once by the instances.
	r.waitRedemptions([]int{2, 2, 2}, 3*lifetime)

	for _, fault := range []struct {
		name   string
		bound  time.Duration
		inject func() time.Time // returns when Redis lost its data, once it answers again
	}{
		{"FLUSHALL", flushBound, func() time.Time {
			flushBetweenRefreshes(t, admin)
			return time.Now()
		}},
		{"SIGKILL and restart", restartBound, func() time.Time {
			var killed time.Time
			noRefreshInFlight(t, admin, func() bool {
				srv.kill()
				killed = time.Now()
				return true
			})
			srv.start() // at once: the instances' retries meet a server that is up
			return killed
		}},
	} {
		r.survive(admin, fault.name, fault.bound, fault.inject, lifetime)
	}
	r.halt()
	r.checkChain()
	r.mu.Lock()
	t.Logf("%d calls, %d caller errors in all", r.calls, len(r.errs))
	r.mu.Unlock()
}

// countingStore counts a RefreshStore's loads.
type countingStore struct {
	token.RefreshStore
	loads atomic.Int64
}

func (c *countingStore) LoadRefresh(ctx context.Context) (token.RefreshState, error) {
	c.loads.Add(1)
	return c.RefreshStore.LoadRefresh(ctx)
}

// redisStoreInstance is an instance whose refresh state is in Redis
// (rediscache's Credential), its loads counted.
func redisStoreInstance(t *testing.T, addr string, up token.Redeemer, logs *logBuf) (*token.Source, *countingStore) {
	rdb := redis.NewClient(redisOptions(addr))
	t.Cleanup(func() { _ = rdb.Close() })
	cache, err := rediscache.New(rdb, rediscache.Options{Prefix: "tcflush:", Source: token.Options{Logger: logs.logger()}})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := cache.Credential("cred")
	if err != nil {
		t.Fatal(err)
	}
	rs := &countingStore{RefreshStore: cred}
	s, err := token.NewSource("cred", up, cred, cred, token.Options{RefreshStore: rs, Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, rs
}

// TestRedisRefreshStoreLosesStateOnFlush is the contrast: with the refresh
// state in Redis (rediscache's Credential, the default RefreshStore), a
// FLUSHALL loses it. Instances keep serving the access tokens they hold;
// a new one gets token.ErrNoRefreshState, permanent, after one load and
// no redemption, and so do its further calls, without a fetch loop, until
// a new authorization is seeded. The Cache warned on first use that this
// Redis may lose refresh state.
func TestRedisRefreshStoreLosesStateOnFlush(t *testing.T) {
	srv := startRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.addr()})
	t.Cleanup(func() { _ = admin.Close() })
	var logs logBuf
	up, first := newTracked(time.Hour)
	instance := func() (*token.Source, *countingStore) { return redisStoreInstance(t, srv.addr(), up, &logs) }
	old, _ := instance()
	if err := old.SeedRefresh(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	held, err := old.Token(t.Context())
	if err != nil || !up.Valid(held.Value) {
		t.Fatalf("Token = %v", err)
	}
	if n := logs.count("WARN", "Redis may lose refresh state"); n != 1 {
		t.Errorf("%d warnings that Redis may lose refresh state; want 1", n)
	}
	flushBetweenRefreshes(t, admin)

	redemptions := up.Redemptions()
	s, rs := instance()
	for i := range 20 {
		_, err := s.Token(t.Context())
		var p interface{ Permanent() bool }
		if !errors.Is(err, token.ErrNoRefreshState) || (i == 0 && (!errors.As(err, &p) || !p.Permanent())) {
			t.Fatalf("call %d of a new instance after FLUSHALL = %v; want ErrNoRefreshState (permanent)", i, err)
		}
	}
	if n, loads := up.Redemptions()-redemptions, rs.loads.Load(); n != 0 || loads != 1 {
		t.Errorf("20 calls after FLUSHALL: %d redemptions, %d loads of the refresh state; want 0 and 1", n, loads)
	}
	// The instance that held a token keeps serving it: only the refresh
	// state is gone.
	if tok, err := old.Token(t.Context()); err != nil || tok.Value != held.Value {
		t.Errorf("the old instance's Token after FLUSHALL = %v; want the token it held", err)
	}
	// Only a new authorization ends it.
	if err := s.SeedRefresh(t.Context(), up.Authorize()); err != nil {
		t.Fatal(err)
	}
	if tok, err := s.Token(t.Context()); err != nil || !up.Valid(tok.Value) {
		t.Errorf("Token after a new authorization = %v", err)
	}
}

// blockingUpstream holds one armed redemption after the upstream acted on
// it, as a slow reply does, until released.
type blockingUpstream struct {
	*tracked
	armed              atomic.Bool
	redeemed, released chan struct{}
}

func (u *blockingUpstream) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	tok, next, err := u.tracked.Redeem(ctx, refresh)
	if u.armed.CompareAndSwap(true, false) {
		close(u.redeemed)
		<-u.released
	}
	return tok, next, err
}

// pgInstance is an instance of one credential whose refresh state is in
// PostgreSQL, quiet.
func pgInstance(t *testing.T, addr string, store *pgrefresh.Store, name string, up token.Redeemer) *token.Source {
	rdb := redis.NewClient(redisOptions(addr))
	t.Cleanup(func() { _ = rdb.Close() })
	o := rediscache.Options{Prefix: "tcwin:", RefreshStores: store.RefreshStore, Source: token.Options{Logger: slog.New(slog.DiscardHandler)}}
	cache, err := rediscache.New(rdb, o)
	if err != nil {
		t.Fatal(err)
	}
	s, err := cache.Source(name, up)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestFlushDuringRedemption pins the window package doc describes: the
// lock lives in Redis, so a FLUSHALL (or restart) between a redemption and
// its commit lets a second instance take the lock and redeem the same
// state from PostgreSQL, which an upstream with reuse detection and no
// grace period answers by revoking the family. The error is permanent and
// redeemed once: no loop. PostgreSQL is not the cause and cannot prevent
// it; a grace period at the upstream can.
func TestFlushDuringRedemption(t *testing.T) {
	srv := startRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.addr()})
	t.Cleanup(func() { _ = admin.Close() })
	ss := stores(t, pgrefresh.Options{})
	name := uniqueName("window")
	tr, first := newTracked(time.Hour)
	up := &blockingUpstream{tracked: tr, redeemed: make(chan struct{}), released: make(chan struct{})}
	a, b := pgInstance(t, srv.addr(), ss[0], name, up), pgInstance(t, srv.addr(), ss[1], name, up)
	if err := a.SeedRefresh(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	up.armed.Store(true)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := a.Token(ctx)
		done <- err
	}()
	<-up.redeemed // A redeemed; its reply and commit are pending
	if err := admin.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	_, err := b.Token(t.Context())
	close(up.released)
	<-done
	if !errors.Is(err, token.ErrRefreshRevoked) || up.Revocations() != 1 {
		t.Fatalf("B's Token after a FLUSHALL during A's redemption = %v, %d revocations; want ErrRefreshRevoked, 1 (the window is closed: update the docs)", err, up.Revocations())
	}
	// A shared the access token it got before B's redemption revoked the
	// family: served, but refused by the upstream until callers report it.
	tok, err := b.Token(t.Context())
	if err == nil && up.Valid(tok.Value) {
		t.Fatal("B's next Token is a token the upstream accepts; want one of the revoked family, or an error")
	}
	if err == nil {
		if err := b.Invalidate(t.Context(), tok.Value); err != nil {
			t.Fatal(err)
		}
	}
	// Then the state A committed is redeemed once, refused, and never again.
	n := up.Redemptions()
	for i := range 5 {
		// The refusal itself, or the shared backoff it recorded (first by
		// B or after A's write, as the race goes): both match it.
		if _, err := b.Token(t.Context()); !errors.Is(err, token.ErrRefreshRevoked) {
			t.Fatalf("call %d after the revocation = %v; want ErrRefreshRevoked", i, err)
		}
	}
	if more := up.Redemptions() - n; more > 1 {
		t.Errorf("5 calls after the revocation redeemed %d times; want at most once", more)
	}
}
