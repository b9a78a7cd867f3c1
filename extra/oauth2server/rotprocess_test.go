package oauth2server_test

// Issue 14, rotating refresh tokens: 100 users' credentials shared by 8
// OS processes through one Redis, each redeemed with oauth.Refresher at
// fosite, which revokes a token family when a retired refresh token is
// presented again (ReuseRevocations). The proxy records every redemption
// (who sent it, when it arrived, when fosite acted on it, when the reply
// went out) and can hold it, so that the test can kill (SIGKILL) the
// redeeming process at random points and classify where each kill landed,
// and delete the refresh lock of a redemption whose reply it holds.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/extra/oauth2server"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/oauth"
)

// rotReport is what a child's callers saw.
type rotReport struct {
	Calls      int64
	Revoked    map[string]int64 // ErrRefreshRevoked per user
	Other      int64            // other errors
	FirstOther string
	// Late counts calls handed a token whose ExpiresAt had passed when the
	// call started, at most MaxLate (ns) before; Expired those handed one
	// that expired before the call returned, at most MaxExpired before.
	Late, MaxLate, Expired, MaxExpired int64
	// Redeems counts this process's redemptions that got a token, and
	// Periods adds up how long each token was to serve before the next
	// redemption: its lifetime as the Source saw it less the refresh-ahead
	// window (ns).
	Redeems, Periods int64
}

// lateness counts a token handed out by a call from start to end.
func (r *rotReport) lateness(exp, start, end time.Time) {
	r.Late, r.MaxLate, r.Expired, r.MaxExpired = lateness(r.Late, r.MaxLate, r.Expired, r.MaxExpired, exp, start, end)
}

func lateness(late, maxLate, expired, maxExpired int64, exp, start, end time.Time) (int64, int64, int64, int64) {
	if !exp.After(start) {
		late++
		maxLate = max(maxLate, int64(start.Sub(exp)))
	}
	if !exp.After(end) {
		expired++
		maxExpired = max(maxExpired, int64(end.Sub(exp)))
	}
	return late, maxLate, expired, maxExpired
}

// lateTolerance is how long after its ExpiresAt a token may be handed out
// before a test fails: the core module's process tests allow a lifetime
// (rediscache checkHandOuts). Under this load a Source's hot path hands out
// a few tokens (one call in some 10,000, in half the runs) up to some 30 ms
// past the ExpiresAt it reported, while the call itself took no time: the
// near cache is made stale by a timer, not a clock read, and a starved
// process can run a caller before the timer. TOKENCACHE_STRICT_EXPIRY=1
// makes it 0.
func lateTolerance(lifetime time.Duration) time.Duration {
	if os.Getenv("TOKENCACHE_STRICT_EXPIRY") != "" {
		return 0
	}
	return lifetime
}

// countingRedeemer counts a Redeemer's tokens and their refresh periods.
type countingRedeemer struct {
	*oauth.Refresher
	ahead            func(time.Duration) time.Duration
	redeems, periods atomic.Int64
}

func (c *countingRedeemer) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	t, next, err := c.Refresher.Redeem(ctx, refresh)
	if err == nil {
		life := time.Until(t.ExpiresAt)
		c.redeems.Add(1)
		c.periods.Add(int64(life - c.ahead(life)))
	}
	return t, next, err
}

func rotConfig(tokenURL string) *oauth2.Config {
	return &oauth2.Config{ClientID: "app", ClientSecret: "app-secret",
		Endpoint: oauth2.Endpoint{TokenURL: tokenURL, AuthStyle: oauth2.AuthStyleInHeader}}
}

// rotChild makes a Source per user, on one Cache.
func rotChild(_ context.Context, c *procConf) (func(context.Context) any, func(), error) {
	rdb := redis.NewClient(&redis.Options{Addr: c.Redis, ContextTimeoutEnabled: true})
	cache, err := rediscache.New(rdb, rediscache.Options{Prefix: c.Prefix,
		Source: token.Options{Logger: quiet, MinRefreshAhead: c.MinRefreshAhead}})
	if err != nil {
		return nil, nil, err
	}
	cfg := rotConfig(c.TokenURL)
	hc := pidClient()
	rd := &countingRedeemer{Refresher: &oauth.Refresher{Config: cfg, HTTPClient: hc}, ahead: refreshAhead(c.MinRefreshAhead)}
	srcs := make([]*token.Source, len(c.Users))
	closeAll := func() {
		for _, s := range srcs {
			if s != nil {
				_ = s.Close()
			}
		}
		_ = rdb.Close()
	}
	for i, user := range c.Users {
		if srcs[i], err = cache.Source(oauth.UserName(cfg, user), rd); err != nil {
			closeAll()
			return nil, nil, err
		}
	}
	load := func(ctx context.Context) any {
		total := &rotReport{Revoked: map[string]int64{}}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range c.Goroutines {
			wg.Go(func() {
				r := rotReport{Revoked: map[string]int64{}}
				for ctx.Err() == nil {
					i := rand.IntN(len(srcs))
					cctx, cancel := context.WithTimeout(ctx, time.Minute)
					start := time.Now()
					tok, err := srcs[i].Token(cctx)
					end := time.Now()
					cancel()
					if ctx.Err() != nil {
						break
					}
					r.Calls++
					switch {
					case errors.Is(err, token.ErrRefreshRevoked):
						r.Revoked[c.Users[i]]++
					case err != nil:
						r.Other++
						if r.FirstOther == "" {
							r.FirstOther = c.Users[i] + ": " + err.Error()
						}
					default:
						r.lateness(tok.ExpiresAt, start, end)
					}
					select {
					case <-ctx.Done():
					case <-time.After(c.pace()):
					}
				}
				mu.Lock()
				total.Calls += r.Calls
				total.Other += r.Other
				total.Late += r.Late
				total.MaxLate = max(total.MaxLate, r.MaxLate)
				total.Expired += r.Expired
				total.MaxExpired = max(total.MaxExpired, r.MaxExpired)
				if total.FirstOther == "" {
					total.FirstOther = r.FirstOther
				}
				for u, n := range r.Revoked {
					total.Revoked[u] += n
				}
				mu.Unlock()
			})
		}
		wg.Wait()
		total.Redeems, total.Periods = rd.redeems.Load(), rd.periods.Load()
		return total
	}
	return load, closeAll, nil
}

// What fosite did with a redemption.
const (
	outGone    = "gone"    // the client went away before it was forwarded
	outRotated = "rotated" // a new token pair for the current refresh token
	outGrace   = "grace"   // a new token pair for a redeemed one, within the grace period
	outRevoked = "revoked" // a redeemed one: fosite revoked the family
	outRefused = "refused" // the family was revoked already (fosite counts it again)
	outError   = "error"   // anything else
)

// redemption is one refresh-token request. Its fields after arrived are
// guarded by rotProxy.mu.
type redemption struct {
	pid             int // 0: the test process itself
	user            *rotUser
	fault           *faultPlan
	arrived         time.Time
	acted, replied  time.Time // zero until then
	clientGone      bool      // the reply was written after the client went away
	outcome         string
	old, next, tok  string // refresh token sent and received, access token received
	expiresIn       int64
	fositeCountedUp int // fosite's ReuseRevocations went up by this much
}

// faultPlan is a fault the proxy applies to the next redemption from a
// live child of a family not revoked.
type faultPlan struct {
	lockLoss  bool
	pre, post time.Duration // holds before forwarding and before replying
	release   chan struct{} // ends the post hold early (lock loss: the takeover arrived)
	hit       chan *redemption
	acted     chan struct{} // closed once forwarded and answered
	finished  chan struct{} // closed when its handler returns
	endedBy   string        // what ended the post hold; guarded by rotProxy.mu
}

func newFaultPlan(lockLoss bool, pre, post time.Duration) *faultPlan {
	return &faultPlan{lockLoss: lockLoss, pre: pre, post: post, release: make(chan struct{}),
		hit: make(chan *redemption, 1), acted: make(chan struct{}), finished: make(chan struct{})}
}

// rotUser is one user's family.
type rotUser struct {
	user, name string // the user and the credential's name
	seedGen    int64
	revokedAt  time.Time   // zero while not revoked
	held       *redemption // a lock-loss target holding its reply
	requests   []*redemption
}

// rtInfo is a refresh token's place in its family: depth 0 is the seed;
// with a grace period a token can have several children.
type rtInfo struct {
	user     *rotUser
	depth    int
	redeemed []*redemption // the redemptions fosite answered that presented it
}

// rotProxy serves the refresh-token requests.
type rotProxy struct {
	p     *proxy
	srv   *oauth2server.Server
	users map[string]*rotUser // by credential name; fixed once serving
	act   sync.Mutex          // one redemption at fosite at a time: its revocation count is its own

	mu     sync.Mutex
	tokens map[string]*rtInfo
	active int
	last   time.Time
	plan   *faultPlan
	killed map[int]time.Time
	reqs   []*redemption
	done   chan struct{} // closed when the test ends: no hold outlives it
}

func (rp *rotProxy) serve(w http.ResponseWriter, r *http.Request) {
	pid, _ := strconv.Atoi(r.Header.Get(pidHeader))
	red := rp.arrive(r.PostForm.Get("refresh_token"), pid)
	defer rp.leave(red)
	pre, post, release := time.Duration(0), time.Duration(0), (chan struct{})(nil)
	if f := red.fault; f != nil {
		pre, post, release = f.pre, f.post, f.release
	}
	if rp.hold(r.Context(), pre, nil) != "" {
		return // gone before it was forwarded: fosite never sees it
	}
	rp.act.Lock()
	before := rp.srv.Stats().ReuseRevocations
	rp.mu.Lock()
	red.acted = time.Now()
	rp.mu.Unlock()
	code, body, err := rp.p.forward(r)
	rp.record(red, code, body, err, rp.srv.Stats().ReuseRevocations-before)
	rp.act.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	ended := rp.hold(r.Context(), post, release)
	writeReply(w, code, body)
	rp.mu.Lock()
	red.replied, red.clientGone = time.Now(), ended == "client gone"
	if f := red.fault; f != nil {
		f.endedBy = ended
	}
	rp.mu.Unlock()
}

// hold waits d, or until release, and returns "" or what ended it early.
func (rp *rotProxy) hold(ctx context.Context, d time.Duration, release chan struct{}) string {
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
	case <-rp.done:
		return "test over"
	}
}

// arrive records a redemption, hands it an armed fault, and releases a
// held lock-loss target once another process redeems its family.
func (rp *rotProxy) arrive(old string, pid int) *redemption {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.active++
	red := &redemption{pid: pid, arrived: time.Now(), outcome: outGone, old: old}
	rp.last = red.arrived
	rp.reqs = append(rp.reqs, red)
	info := rp.tokens[old]
	if info == nil {
		return red // not a refresh token of any family: fosite refuses it
	}
	u := info.user
	red.user = u
	u.requests = append(u.requests, red)
	if h := u.held; h != nil && h.pid != pid {
		u.held = nil
		close(h.fault.release)
	}
	_, dead := rp.killed[pid]
	if f := rp.plan; f != nil && pid != 0 && !dead && u.revokedAt.IsZero() && (!f.lockLoss || u.held == nil) {
		rp.plan, red.fault = nil, f
		if f.lockLoss {
			u.held = red
		}
		f.hit <- red
	}
	return red
}

// record notes what fosite answered.
func (rp *rotProxy) record(red *redemption, code int, body []byte, err error, revocations int) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	defer func() {
		if f := red.fault; f != nil {
			close(f.acted)
		}
	}()
	red.fositeCountedUp = revocations
	var rep upstreamReply
	info := rp.tokens[red.old]
	switch {
	case err != nil || info == nil:
		red.outcome = outError
	case code == http.StatusOK && json.Unmarshal(body, &rep) == nil && rep.RefreshToken != "":
		red.next, red.tok, red.expiresIn = rep.RefreshToken, rep.AccessToken, rep.ExpiresIn
		red.outcome = outRotated
		if len(info.redeemed) > 0 {
			red.outcome = outGrace
		}
		info.redeemed = append(info.redeemed, red)
		rp.tokens[rep.RefreshToken] = &rtInfo{user: info.user, depth: info.depth + 1}
	case revocations > 0 && info.user.revokedAt.IsZero():
		red.outcome = outRevoked
		info.user.revokedAt = red.acted
		info.redeemed = append(info.redeemed, red)
	case revocations > 0:
		red.outcome = outRefused
		info.redeemed = append(info.redeemed, red)
	default:
		red.outcome = outError
	}
}

func (rp *rotProxy) leave(red *redemption) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if f := red.fault; f != nil {
		if red.user.held == red {
			red.user.held = nil
		}
		close(f.finished)
	}
	rp.active--
}

// rotSize is one run's size.
type rotSize struct {
	procs, goroutines, users, lifetimes int
	lifetime                            time.Duration
	paceMin, paceMax                    time.Duration
	kills, losses                       int // per grace setting
}

// rotCI is run always; rotFull with TOKENCACHE_MEASURE=1.
var (
	rotCI   = rotSize{procs: 8, goroutines: 16, users: 100, lifetimes: 5, lifetime: 3 * time.Second, paceMin: 50 * time.Millisecond, paceMax: 100 * time.Millisecond, kills: 3, losses: 1}
	rotFull = rotSize{procs: 8, goroutines: 64, users: 100, lifetimes: 20, lifetime: 3 * time.Second, paceMin: 50 * time.Millisecond, paceMax: 100 * time.Millisecond, kills: 24, losses: 8}
)

const (
	rotLockTTL = 2 * time.Second // rediscache's default
	rotGrace   = 5 * time.Second
)

// rotHarness runs children against one fosite, one proxy and one Redis.
type rotHarness struct {
	t      *testing.T
	size   rotSize
	srv    *oauth2server.Server
	rp     *rotProxy
	conf   *procConf
	rdb    *redis.Client
	cache  *rediscache.Cache
	creds  map[string]*rediscache.Credential // the test's own view of Redis, by credential name
	prefix string

	mu   sync.Mutex // guards live
	live []*child
}

func newRotHarness(t *testing.T, addr string, size rotSize, grace time.Duration) *rotHarness {
	t.Helper()
	srv := oauth2server.New(oauth2server.Options{Clients: testClients, AccessTokenLifespan: size.lifetime, ReuseGracePeriod: grace})
	px := newProxy(t, srv.URL+oauth2server.TokenPath)
	rp := &rotProxy{p: px, srv: srv, users: map[string]*rotUser{}, tokens: map[string]*rtInfo{}, killed: map[int]time.Time{}, done: make(chan struct{})}
	px.rot = rp
	// Cleanups run last-registered first: held replies end before the
	// servers' Close waits for them.
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(rp.done) })
	h := &rotHarness{t: t, size: size, srv: srv, rp: rp, prefix: testPrefix(t), creds: map[string]*rediscache.Credential{}}
	h.rdb = redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = h.rdb.Close() })
	var err error
	if h.cache, err = rediscache.New(h.rdb, rediscache.Options{Prefix: h.prefix, Source: token.Options{Logger: quiet}}); err != nil {
		t.Fatal(err)
	}
	cfg := rotConfig(px.URL)
	h.conf = &procConf{Redis: addr, Prefix: h.prefix, TokenURL: px.URL, Goroutines: size.goroutines,
		PaceMin: size.paceMin, PaceMax: size.paceMax, MinRefreshAhead: ccMinRefreshAhead}
	ctx := context.Background()
	for i := range size.users {
		user := fmt.Sprintf("user%03d", i)
		name := oauth.UserName(cfg, user)
		cred, err := h.cache.Credential(name)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := srv.AuthorizeUser(ctx, "app", user)
		if err != nil {
			t.Fatal(err)
		}
		gen, err := cred.SeedRefresh(ctx, tok.RefreshToken) // the authorization callback
		if err != nil {
			t.Fatal(err)
		}
		u := &rotUser{user: user, name: name, seedGen: gen}
		rp.users[name], rp.tokens[tok.RefreshToken], h.creds[name] = u, &rtInfo{user: u}, cred
		h.conf.Users = append(h.conf.Users, user)
	}
	return h
}

func (h *rotHarness) start() *child {
	ch := startChild(h.t, "rot", h.conf)
	h.mu.Lock()
	h.live = append(h.live, ch)
	h.mu.Unlock()
	return ch
}

// stop stops every live child and returns the sum of their reports.
func (h *rotHarness) stop() *rotReport {
	h.mu.Lock()
	live := slices.Clone(h.live)
	h.mu.Unlock()
	total := &rotReport{Revoked: map[string]int64{}}
	for _, b := range stopChildren(h.t, live, h.quiesce) {
		var r rotReport
		if err := json.Unmarshal(b, &r); err != nil {
			h.t.Fatal(err)
		}
		total.Calls += r.Calls
		total.Other += r.Other
		total.Late += r.Late
		total.MaxLate = max(total.MaxLate, r.MaxLate)
		total.Expired += r.Expired
		total.MaxExpired = max(total.MaxExpired, r.MaxExpired)
		total.Redeems += r.Redeems
		total.Periods += r.Periods
		if total.FirstOther == "" {
			total.FirstOther = r.FirstOther
		}
		for u, n := range r.Revoked {
			total.Revoked[u] += n
		}
	}
	return total
}

// quiesce waits until no redemption can be under way: none served or
// received for 750 ms, and no refresh lock held.
func (h *rotHarness) quiesce() {
	var locks []string
	for name := range h.creds {
		locks = append(locks, "{"+h.prefix+name+"}:lock")
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		h.rp.mu.Lock()
		busy := h.rp.active > 0 || time.Since(h.rp.last) < 750*time.Millisecond
		h.rp.mu.Unlock()
		n, err := h.rdb.Exists(context.Background(), locks...).Result()
		if !busy && err == nil && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Error("refreshes still under way 30s after the callers stopped")
			return
		}
		time.Sleep(20 * time.Millisecond) // polling the proxy's and Redis's state
	}
}

// watchGenerations samples every user's stored refresh state until ctx
// ends and returns what went wrong: a state fosite never issued, one stored
// under a generation that does not match its depth in the family, or one
// shallower than a state sampled before (a generation going backwards).
func (h *rotHarness) watchGenerations(ctx context.Context) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		last := map[string]int{}
		var bad []string
		tick := time.NewTicker(250 * time.Millisecond) // sampling, not waiting for anything
		defer tick.Stop()
		for {
			for name, cred := range h.creds {
				if msg := h.checkGeneration(name, cred, last); msg != "" && len(bad) < 20 {
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

func (h *rotHarness) checkGeneration(name string, cred *rediscache.Credential, last map[string]int) string {
	st, err := cred.LoadRefresh(context.Background())
	if err != nil {
		return fmt.Sprintf("%s: %v", name, err)
	}
	h.rp.mu.Lock()
	info, u := h.rp.tokens[st.Value], h.rp.users[name]
	h.rp.mu.Unlock()
	switch {
	case info == nil || info.user != u:
		return fmt.Sprintf("%s: generation %d holds a refresh token fosite never issued to it", u.user, st.Generation)
	case st.Generation != u.seedGen+int64(info.depth):
		return fmt.Sprintf("%s: generation %d holds refresh token #%d (want generation %d)", u.user, st.Generation, info.depth, u.seedGen+int64(info.depth))
	case info.depth < last[name]:
		return fmt.Sprintf("%s: refresh token #%d stored after #%d", u.user, info.depth, last[name])
	}
	last[name] = info.depth
	return ""
}

// rotKill is one kill: of pid, at, while the proxy served target.
type rotKill struct {
	pid    int
	at     time.Time
	target *redemption
	mode   string             // "uniform" or "after reply"
	redis  map[string]rotSnap // what Redis held right after the kill, by credential name
}

// rotSnap is a credential's stored state: its refresh token and access token.
type rotSnap struct{ refresh, token string }

// phase says where kill k landed for red, a redemption of the killed
// process: (a) before the proxy forwarded it to fosite (it may still have,
// if it arrived or was forwarded after the kill), (b) after fosite
// answered, before the reply went out, (c) after the reply, before the new
// refresh state reached Redis, (d) after that, before the access token
// did, (e) after both, or nothing to commit. Call it with rp.mu held.
func (h *rotHarness) phase(red *redemption, k *rotKill) string {
	switch {
	case red.arrived.After(k.at), red.acted.IsZero(), red.acted.After(k.at):
		return "a"
	case red.replied.IsZero(), red.replied.After(k.at):
		return "b"
	case red.outcome != outRotated && red.outcome != outGrace:
		return "e"
	}
	snap, ok := k.redis[red.user.name]
	if !ok {
		return "e"
	}
	stored, next := h.rp.tokens[snap.refresh], h.rp.tokens[red.next]
	switch {
	case stored == nil || stored.depth < next.depth:
		return "c"
	case snap.refresh == red.next && snap.token != red.tok:
		return "d"
	}
	return "e"
}

// snapshot reads what Redis holds for every family pid redeemed in the 2 s
// before at: pid is dead, and its locks keep the others out.
func (h *rotHarness) snapshot(pid int, at time.Time) map[string]rotSnap {
	h.rp.mu.Lock()
	names := map[string]bool{}
	for _, red := range h.rp.reqs {
		if red.pid == pid && red.user != nil && (red.replied.IsZero() || red.replied.After(at.Add(-2*time.Second))) {
			names[red.user.name] = true
		}
	}
	h.rp.mu.Unlock()
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
		snaps[name] = rotSnap{refresh: st.Value, token: sh.Value}
	}
	return snaps
}

// await arms f and returns the redemption it landed on.
func (h *rotHarness) await(f *faultPlan) *redemption {
	h.t.Helper()
	h.rp.mu.Lock()
	h.rp.plan = f
	h.rp.mu.Unlock()
	select {
	case red := <-f.hit:
		return red
	case <-time.After(30 * time.Second):
		h.t.Fatal("no redemption to inject a fault into within 30s")
	}
	return nil
}

func randDur(d time.Duration) time.Duration { return rand.N(d + 1) }

// injectKill holds the next redemption a random time before and after
// fosite acts, kills its process at a random point (uniform over the holds
// and 50 ms more, or within 3 ms of the reply, to land after it), reads
// Redis, and starts a new child in its place.
func (h *rotHarness) injectKill() *rotKill {
	t := h.t
	t.Helper()
	f := newFaultPlan(false, randDur(100*time.Millisecond), randDur(150*time.Millisecond))
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
	var victim *child
	h.mu.Lock()
	for i, ch := range h.live {
		if ch.pid() == red.pid {
			victim = ch
			h.live = slices.Delete(h.live, i, i+1)
			break
		}
	}
	h.mu.Unlock()
	if victim == nil {
		t.Fatalf("no live child has pid %d", red.pid)
	}
	k.at = time.Now()
	h.rp.mu.Lock()
	h.rp.killed[k.pid] = k.at
	h.rp.mu.Unlock()
	victim.kill()
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

// injectLockLoss holds the next redemption's reply after fosite answered,
// deletes its credential's lock in Redis, as if it had expired (the holder
// stalled, or a failover lost the key), and lets the reply go once another
// process redeems the same family, or the holder gave up and went away, or
// 3 lock TTLs passed.
func (h *rotHarness) injectLockLoss() rotLoss {
	t := h.t
	t.Helper()
	f := newFaultPlan(true, 0, 3*rotLockTTL)
	red := h.await(f)
	select {
	case <-f.acted:
	case <-f.finished:
		return rotLoss{target: red, endedBy: "gone before it was forwarded"}
	case <-time.After(time.Minute):
		t.Fatal("fosite never answered the held redemption")
	}
	n, err := h.rdb.Del(context.Background(), "{"+h.prefix+red.user.name+"}:lock").Result() // the key layout of rediscache's package doc
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.finished:
	case <-time.After(time.Minute):
		t.Fatal("the held redemption never ended")
	}
	h.rp.mu.Lock()
	defer h.rp.mu.Unlock()
	ended := f.endedBy
	if ended == "" {
		ended = "timeout"
	}
	return rotLoss{target: red, deleted: n == 1, endedBy: ended}
}

// rotResults is what a run's proxy, fosite, reports and Redis add up to.
type rotResults struct {
	total, minRed, maxRed int
	expiresIn             float64 // fosite's, on average
	graceHits             int     // reuses answered within the grace period
	revoked               []string
	fositeRevocations     int            // fosite's ReuseRevocations
	causes                map[string]int // reuses by what caused them
	unexplained           []string
	maxReuseDelay         time.Duration // the longest from a rotation to a reuse of what it replaced
	afterRevocation       int           // most redemptions of one family after its revocation
	// Families not revoked whose stored refresh token fosite would refuse
	// (lost), or has redeemed already (stale: within a grace period).
	lost, stale      []string
	rep              *rotReport
	revokedOnHealthy []string // ErrRefreshRevoked on a family never revoked
}

func (h *rotHarness) results(rep *rotReport, kills map[int]*rotKill) rotResults {
	rp := h.rp
	r := rotResults{causes: map[string]int{}, minRed: -1, rep: rep, fositeRevocations: h.srv.Stats().ReuseRevocations}
	ctx := context.Background()
	rp.mu.Lock()
	defer rp.mu.Unlock()
	var sumExp, nExp int64
	for name, u := range rp.users {
		n, after := 0, 0
		for _, red := range u.requests {
			if red.pid == 0 {
				continue
			}
			n++
			if red.expiresIn > 0 {
				sumExp += red.expiresIn
				nExp++
			}
			if !u.revokedAt.IsZero() && red.arrived.After(u.revokedAt) {
				after++
			}
			info := rp.tokens[red.old]
			if red.outcome != outGrace && red.outcome != outRevoked || len(info.redeemed) < 2 {
				continue
			}
			r1 := info.redeemed[0]
			cause := h.cause(r1, kills)
			r.causes[cause]++
			if cause == "unexplained" {
				r.unexplained = append(r.unexplained, h.describeReuse(red, r1, kills))
			}
			r.maxReuseDelay = max(r.maxReuseDelay, red.acted.Sub(r1.acted))
			if red.outcome == outGrace {
				r.graceHits++
			}
		}
		r.total += n
		r.maxRed = max(r.maxRed, n)
		if r.minRed < 0 || n < r.minRed {
			r.minRed = n
		}
		r.afterRevocation = max(r.afterRevocation, after)
		if !u.revokedAt.IsZero() {
			r.revoked = append(r.revoked, u.user)
			continue
		}
		if rep.Revoked[u.user] > 0 {
			r.revokedOnHealthy = append(r.revokedOnHealthy, u.user)
		}
		st, err := h.creds[name].LoadRefresh(ctx)
		switch {
		case err != nil || !h.srv.RefreshActive(st.Value):
			r.lost = append(r.lost, u.user)
		case rp.tokens[st.Value] == nil || len(rp.tokens[st.Value].redeemed) > 0:
			r.stale = append(r.stale, u.user)
		}
	}
	r.expiresIn = float64(sumExp) / float64(max(nExp, 1))
	slices.Sort(r.revoked)
	return r
}

// cause says why the refresh token r1 redeemed was presented again: r1's
// process was killed before its commit reached Redis, or r1's lock was
// deleted by the test.
func (h *rotHarness) cause(r1 *redemption, kills map[int]*rotKill) string {
	if r1.fault != nil && r1.fault.lockLoss {
		return "lock loss"
	}
	if k := kills[r1.pid]; k != nil {
		switch ph := h.phase(r1, k); ph {
		case "a":
			return "kill (a: forwarded after the kill)"
		case "b", "c":
			return "kill (" + ph + ")"
		}
	}
	return "unexplained"
}

func (h *rotHarness) describeReuse(red, r1 *redemption, kills map[int]*rotKill) string {
	killed := "not killed"
	if k := kills[r1.pid]; k != nil {
		killed = fmt.Sprintf("killed %v after the reply, landing %s", k.at.Sub(r1.replied).Round(time.Millisecond), h.phase(r1, k))
	}
	return fmt.Sprintf("%s: pid %d redeemed #%d (%s) %v after pid %d did (reply %v after fosite answered, client gone %v; %s)",
		red.user.user, red.pid, h.rp.tokens[red.old].depth, red.outcome, red.acted.Sub(r1.acted).Round(time.Millisecond), r1.pid,
		r1.replied.Sub(r1.acted).Round(time.Millisecond), r1.clientGone, killed)
}

// TestRotatingRefreshProcesses: 8 OS processes × 16 goroutines (64 with
// TOKENCACHE_MEASURE=1), 100 users' rotating refresh tokens at fosite with
// no reuse grace, 5 lifetimes of 3 s tokens (20). Each refresh token is
// redeemed once: about one redemption per refresh period per user, no
// family revoked, every user's stored refresh token active at fosite at the
// end and never older than one sampled before; no caller error.
func TestRotatingRefreshProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process load test")
	}
	size := rotCI
	if measure() {
		size = rotFull
	}
	h := newRotHarness(t, realRedis(t), size, 0)
	ctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	gens := h.watchGenerations(ctx)
	start := time.Now()
	for range size.procs {
		h.start()
	}
	allRunning := time.Now()
	time.Sleep(time.Until(start.Add(time.Duration(size.lifetimes) * size.lifetime))) // the load runs
	stopped := time.Now()
	rep := h.stop()
	stopWatch()
	backwards := <-gens
	r := h.results(rep, nil)

	period := time.Duration(rep.Periods / max(rep.Redeems, 1))
	ideal := int(math.Ceil(1 + stopped.Sub(start).Seconds()/period.Seconds()))
	least := int(stopped.Sub(allRunning) / (2 * period))
	t.Logf("%d processes × %d goroutines, %d users, %v tokens (fosite: expires_in %.2f s), no reuse grace, LockTTL 2s (default), "+
		"RefreshAhead 0.2, MinRefreshAhead %v (refreshed every %v), callers pause %v..%v, %v of load (%v with all running):\n"+
		"  redemptions %d, per user %d..%d (ideal at most %d; at least %d asserted); reuses %d; fosite's reuse revocations %d\n"+
		"  lost refresh states %d, stale %d, stored states out of place %d; calls %d, errors %d (ErrRefreshRevoked %d); "+
		"handed a token expired when the call started %d (at most %v before), when it returned %d (at most %v before)",
		size.procs, size.goroutines, size.users, size.lifetime, r.expiresIn, ccMinRefreshAhead, period, size.paceMin, size.paceMax,
		stopped.Sub(start).Round(time.Millisecond), stopped.Sub(allRunning).Round(time.Millisecond),
		r.total, r.minRed, r.maxRed, ideal, least, r.graceHits+len(r.revoked), r.fositeRevocations,
		len(r.lost), len(r.stale), len(backwards), rep.Calls, rep.Other+sum(rep.Revoked), sum(rep.Revoked), rep.Late,
		time.Duration(rep.MaxLate).Round(time.Microsecond), rep.Expired, time.Duration(rep.MaxExpired).Round(time.Microsecond))
	if r.maxRed > ideal+1 || r.minRed < least {
		t.Errorf("redemptions per user %d..%d; want %d..%d (one per %v refresh period, +1 for one in flight at the end)",
			r.minRed, r.maxRed, least, ideal+1, period)
	}
	if r.fositeRevocations != 0 || len(r.revoked) != 0 || r.graceHits != 0 {
		t.Errorf("fosite revoked %d families (%v), %d reuses: %v", r.fositeRevocations, r.revoked, len(r.unexplained), r.unexplained)
	}
	if len(r.lost)+len(r.stale) != 0 {
		t.Errorf("refresh states lost: %v; stale: %v", r.lost, r.stale)
	}
	if len(backwards) != 0 {
		t.Errorf("stored refresh states: %v", backwards)
	}
	if n := rep.Other + sum(rep.Revoked); n != 0 {
		t.Errorf("callers: %d errors (first: %s)", n, rep.FirstOther)
	}
	if rep.Late != 0 && time.Duration(rep.MaxLate) >= lateTolerance(size.lifetime) {
		t.Errorf("%d calls were handed a token that had expired when they started, up to %v before", rep.Late, time.Duration(rep.MaxLate))
	}
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// TestRotatingRefreshFaults: the load of TestRotatingRefreshProcesses
// while the test kills (SIGKILL) the process whose redemption the proxy
// holds, at random points, and deletes the refresh lock of a redemption
// whose reply it holds after fosite answered (a lock lost mid-redemption),
// then runs fault-free for a lock TTL and two lifetimes; once with no
// reuse grace at fosite, once with 5 s. It reports where the kills landed
// and what fosite revoked. With the grace period nothing is revoked;
// without, every reuse comes from a kill before the new refresh state
// reached Redis, or from a lock loss. Either way: a revoked family is not
// redeemed in a loop, its callers get ErrRefreshRevoked, no refresh state
// is lost or overwritten by an older one.
//
// 3 kills and 1 lock loss per grace setting; TOKENCACHE_MEASURE=1 makes
// it 24 and 8, with 64 goroutines a process.
func TestRotatingRefreshFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process fault test")
	}
	size := rotCI
	if measure() {
		size = rotFull
	}
	addr := realRedis(t)
	var rows []rotRow
	for _, grace := range []time.Duration{0, rotGrace} {
		t.Run("grace "+grace.String(), func(t *testing.T) {
			rows = append(rows, rotFaults(t, addr, size, grace))
		})
	}
	t.Logf("%d processes × %d goroutines, %d users, %v tokens, LockTTL %v, RefreshAhead 0.2, MinRefreshAhead %v, callers pause %v..%v; "+
		"kill targets held 0..100ms before fosite and 0..150ms after:\n%s",
		size.procs, size.goroutines, size.users, size.lifetime, rotLockTTL, ccMinRefreshAhead, size.paceMin, size.paceMax, rotTable(rows))
}

func rotFaults(t *testing.T, addr string, size rotSize, grace time.Duration) rotRow {
	h := newRotHarness(t, addr, size, grace)
	ctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	gens := h.watchGenerations(ctx)
	for range size.procs {
		h.start()
	}
	time.Sleep(2 * size.lifetime)                 // load before the first fault
	order := make([]bool, size.kills+size.losses) // true: a lock loss
	for i := range size.losses {
		order[i] = true
	}
	rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	killed := map[int]*rotKill{}
	var lost []rotLoss
	for _, loss := range order {
		if loss {
			lost = append(lost, h.injectLockLoss())
			continue
		}
		k := h.injectKill()
		killed[k.pid] = k
	}
	time.Sleep(rotLockTTL + 2*size.lifetime) // fault-free: every family is redeemed again
	rep := h.stop()
	stopWatch()
	backwards := <-gens
	r := h.results(rep, killed)
	row := h.row(grace, killed, lost, &r, backwards)
	if len(r.unexplained) > 0 {
		t.Errorf("reuses no fault explains: %s", strings.Join(r.unexplained, "; "))
	}
	if grace > 0 && r.fositeRevocations > 0 {
		t.Errorf("%d revocations within a %v grace period (longest reuse %v after the rotation)", r.fositeRevocations, grace, r.maxReuseDelay)
	}
	if r.afterRevocation > 2 {
		t.Errorf("a revoked family was redeemed %d more times; want at most 2 (the shared backoff is permanent)", r.afterRevocation)
	}
	for _, u := range r.revoked {
		if rep.Revoked[u] == 0 {
			t.Errorf("%s was revoked, but no caller got ErrRefreshRevoked", u)
		}
	}
	if len(r.revokedOnHealthy)+len(r.lost)+len(r.stale)+len(backwards) > 0 {
		t.Errorf("ErrRefreshRevoked on families never revoked: %v; lost refresh states: %v (stale %v); stored states: %v",
			r.revokedOnHealthy, r.lost, r.stale, backwards)
	}
	if rep.Other > 0 {
		t.Errorf("%d caller errors other than ErrRefreshRevoked; first: %s", rep.Other, rep.FirstOther)
	}
	h.checkRevoked(r.revoked)
	return row
}

// checkRevoked asks a Source of the test's own for each revoked family: it
// must get ErrRefreshRevoked from the shared backoff, without asking fosite.
func (h *rotHarness) checkRevoked(users []string) {
	cfg := rotConfig(h.rp.p.URL)
	for _, user := range users {
		src, err := h.cache.Source(oauth.UserName(cfg, user), &oauth.Refresher{Config: cfg})
		if err != nil {
			h.t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = src.Token(ctx)
		cancel()
		_ = src.Close()
		if !errors.Is(err, token.ErrRefreshRevoked) {
			h.t.Errorf("a new Source of revoked %s: %v, want ErrRefreshRevoked", user, err)
		}
	}
	h.rp.mu.Lock()
	defer h.rp.mu.Unlock()
	for _, red := range h.rp.reqs {
		if red.pid == 0 {
			h.t.Errorf("the test's Source of a revoked family asked fosite")
		}
	}
}

// rotRow is one grace setting's column of the faults table.
type rotRow struct {
	grace time.Duration
	cells map[string]string
}

var rotMetrics = []string{
	"kills (kill point)", "kill landed (a b c d e)", "other redemptions caught (b c d, a forwarded after)",
	"lock losses injected", "held reply ended by", "redemptions (per user)",
	"reuses within grace", "families revoked", "fosite's ReuseRevocations", "reuses by cause",
	"longest reuse after its rotation", "most redemptions after a revocation", "callers' ErrRefreshRevoked",
	"other caller errors", "lost / stale refresh states", "stored states out of place",
}

func (h *rotHarness) row(grace time.Duration, killed map[int]*rotKill, lost []rotLoss, r *rotResults, backwards []string) rotRow {
	target, other, modes := map[string]int{}, map[string]int{}, map[string]int{}
	h.rp.mu.Lock()
	for _, k := range killed {
		target[h.phase(k.target, k)]++
		modes[k.mode]++
		for _, red := range h.rp.reqs {
			if red.pid != k.pid || red == k.target || red.user == nil {
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
	h.rp.mu.Unlock()
	ended, deleted := map[string]int{}, 0
	for _, l := range lost {
		ended[l.endedBy]++
		if l.deleted {
			deleted++
		}
	}
	return rotRow{grace: grace, cells: map[string]string{
		"kills (kill point)":                                  fmt.Sprintf("%d (uniform %d, after reply %d)", len(killed), modes["uniform"], modes["after reply"]),
		"kill landed (a b c d e)":                             fmt.Sprintf("%d %d %d %d %d", target["a"], target["b"], target["c"], target["d"], target["e"]),
		"other redemptions caught (b c d, a forwarded after)": fmt.Sprintf("%d %d %d, %d", other["b"], other["c"], other["d"], other["a"]),
		"lock losses injected":                                fmt.Sprintf("%d (lock key deleted %d)", len(lost), deleted),
		"held reply ended by":                                 counts(ended),
		"redemptions (per user)":                              fmt.Sprintf("%d (%d..%d)", r.total, r.minRed, r.maxRed),
		"reuses within grace":                                 strconv.Itoa(r.graceHits),
		"families revoked":                                    strconv.Itoa(len(r.revoked)),
		"fosite's ReuseRevocations":                           strconv.Itoa(r.fositeRevocations),
		"reuses by cause":                                     counts(r.causes),
		"longest reuse after its rotation":                    r.maxReuseDelay.Round(time.Millisecond).String(),
		"most redemptions after a revocation":                 strconv.Itoa(r.afterRevocation),
		"callers' ErrRefreshRevoked":                          strconv.FormatInt(sum(r.rep.Revoked), 10),
		"other caller errors":                                 strconv.FormatInt(r.rep.Other, 10),
		"lost / stale refresh states":                         fmt.Sprintf("%d / %d", len(r.lost), len(r.stale)),
		"stored states out of place":                          strconv.Itoa(len(backwards)),
	}}
}

func counts(m map[string]int) string {
	var parts []string
	for k, n := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

func rotTable(rows []rotRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  %-52s", "grace")
	for _, r := range rows {
		fmt.Fprintf(&b, " | %-40s", r.grace)
	}
	for _, m := range rotMetrics {
		fmt.Fprintf(&b, "\n  %-52s", m)
		for _, r := range rows {
			fmt.Fprintf(&b, " | %-40s", r.cells[m])
		}
	}
	return b.String()
}
