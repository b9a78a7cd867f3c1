package rediscache_test

// Issue 11, item 2: an instance cut from Redis for real, in a Linux network
// namespace of its own. Needs root and iproute2 (and iptables for the
// dropped subscription); skips without them, unless CI or
// TOKENCACHE_REQUIRE_NETNS=1 says the test must run.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
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
	"github.com/tokencache/tokencache/token/tokentest"
)

const requireNetnsEnv = "TOKENCACHE_REQUIRE_NETNS"

// netnsRequired reports whether the environment says the namespace tests
// must run (CI runs as root with iproute2 installed).
func netnsRequired() bool {
	ci := strings.ToLower(os.Getenv("CI"))
	return os.Getenv(requireNetnsEnv) == "1" || (ci != "" && ci != "0" && ci != "false")
}

// netns is a network namespace with two veth pairs to the host: one that
// carries Redis traffic (the host side is redisHost, the namespace side
// redisNS), which the test cuts, and one to the upstream (upHost, upNS),
// which stays up. Addresses are in 10.231.X.0/29, a private range; traffic
// goes only between the host and the namespace.
type netns struct {
	t                  *testing.T
	name               string
	redisLink, upLink  string // host-side veth names
	redisHost, redisNS string
	upHost, upNS       string
}

// newNetns makes the namespace and its links, removed when the test ends.
func newNetns(t *testing.T, tools ...string) *netns {
	t.Helper()
	skip := func(why string) {
		t.Helper()
		if netnsRequired() {
			t.Fatalf("%s; CI or %s=1 requires this test to run", why, requireNetnsEnv)
		}
		t.Skipf("%s: skipped outside CI (set %s=1 to require it)", why, requireNetnsEnv)
	}
	if os.Geteuid() != 0 {
		skip("needs root to make a network namespace")
	}
	for _, tool := range append([]string{"ip", "redis-server"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			skip("needs " + tool + " on PATH (iproute2, redis-server, iptables)")
		}
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	n := &netns{t: t, name: "tcpart-" + id, redisLink: "tcr" + id, upLink: "tcu" + id}
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr show: %v: %s", err, out)
	}
	x := -1
	for range 100 {
		c := mrand.IntN(256)
		if !strings.Contains(string(out), fmt.Sprintf(" 10.231.%d.", c)) {
			x = c
			break
		}
	}
	if x < 0 {
		t.Fatal("no free 10.231.X.0/29 subnet")
	}
	sub := fmt.Sprintf("10.231.%d.", x)
	n.redisHost, n.redisNS, n.upHost, n.upNS = sub+"1", sub+"2", sub+"5", sub+"6"

	n.ip("netns", "add", n.name)
	t.Cleanup(func() { n.try("ip", "netns", "del", n.name) }) // also removes the veths in it
	for _, l := range []struct{ host, hostAddr, nsAddr string }{
		{n.redisLink, n.redisHost, n.redisNS},
		{n.upLink, n.upHost, n.upNS},
	} {
		n.ip("link", "add", l.host, "type", "veth", "peer", "name", l.host+"p")
		t.Cleanup(func() { n.try("ip", "link", "del", l.host) })
		n.ip("link", "set", l.host+"p", "netns", n.name)
		n.ip("addr", "add", l.hostAddr+"/30", "dev", l.host)
		n.ip("link", "set", l.host, "up")
		n.ip("-n", n.name, "addr", "add", l.nsAddr+"/30", "dev", l.host+"p")
		n.ip("-n", n.name, "link", "set", l.host+"p", "up")
	}
	n.ip("-n", n.name, "link", "set", "lo", "up")
	return n
}

func (n *netns) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// try runs a cleanup command, logging a failure.
func (n *netns) try(args ...string) {
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
		n.t.Logf("cleanup: %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// exec returns the command prefix that runs a program in the namespace.
func (n *netns) exec() []string { return []string{"ip", "netns", "exec", n.name} }

// cutRedis takes the host side of the Redis link down: the namespace's
// packets to Redis are dropped silently (no carrier), as behind a dead
// switch port; connects fail after ARP gives up (about 3 s).
func (n *netns) cutRedis() { n.ip("link", "set", n.redisLink, "down") }

// healRedis brings the link back; the host's route returns with it.
func (n *netns) healRedis() { n.ip("link", "set", n.redisLink, "up") }

// drop adds an iptables rule in the namespace, removed when t ends.
func (n *netns) drop(t *testing.T, rule ...string) {
	t.Helper()
	args := append(append(n.exec(), "iptables", "-w", "-A"), rule...)
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(func() { n.try(append(append(n.exec(), "iptables", "-w", "-D"), rule...)...) })
}

// listen listens on addr:0 (an address of the host side).
func (n *netns) listen(addr string) net.Listener {
	n.t.Helper()
	l, err := net.Listen("tcp", addr+":0")
	if err != nil {
		n.t.Fatal(err)
	}
	return l
}

// monitor records what a Redis server executes (MONITOR), in order.
type monitor struct {
	conn  net.Conn
	mu    sync.Mutex
	lines []monLine
	done  chan struct{}
}

// monLine is one executed command: the client's address ("lua" for a
// command a script ran), and the command.
type monLine struct {
	at     time.Time
	client string
	args   []string
}

func startMonitor(t *testing.T, addr string) *monitor {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	m := &monitor{conn: c, done: make(chan struct{})}
	r := bufio.NewReader(c)
	if _, err := c.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "+OK") {
		t.Fatalf("MONITOR: %q, %v", l, err)
	}
	go func() {
		defer close(m.done)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if ml, ok := parseMonitorLine(strings.TrimRight(l, "\r\n")); ok {
				m.mu.Lock()
				m.lines = append(m.lines, ml)
				m.mu.Unlock()
			}
		}
	}()
	t.Cleanup(m.stop)
	return m
}

func (m *monitor) stop() {
	_ = m.conn.Close()
	<-m.done
}

func (m *monitor) snapshot() []monLine {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]monLine(nil), m.lines...)
}

// parseMonitorLine parses `+1700000000.123456 [0 10.0.0.2:5555] "SET" "k" "v"`.
func parseMonitorLine(l string) (monLine, bool) {
	ts, rest, ok := strings.Cut(strings.TrimPrefix(l, "+"), " [")
	if !ok {
		return monLine{}, false
	}
	src, rest, ok := strings.Cut(rest, "] ")
	if !ok {
		return monLine{}, false
	}
	_, client, _ := strings.Cut(src, " ")
	sec, err := strconv.ParseFloat(ts, 64)
	if err != nil {
		return monLine{}, false
	}
	ml := monLine{at: time.Unix(0, int64(sec*1e9)), client: client}
	for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimSpace(rest) {
		if rest[0] != '"' {
			return monLine{}, false
		}
		var b strings.Builder
		i := 1
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				switch rest[i] {
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				case 't':
					b.WriteByte('\t')
				case 'a':
					b.WriteByte('\a')
				case 'b':
					b.WriteByte('\b')
				case 'x':
					if i+2 < len(rest) {
						v, _ := strconv.ParseUint(rest[i+1:i+3], 16, 8)
						b.WriteByte(byte(v))
						i += 2
					}
				default:
					b.WriteByte(rest[i])
				}
				continue
			}
			b.WriteByte(rest[i])
		}
		ml.args = append(ml.args, b.String())
		rest = rest[min(i+1, len(rest)):]
	}
	return ml, len(ml.args) > 0
}

// tokenWrite is a SET of the credential's token key by a script, and the
// client whose script it was.
type tokenWrite struct {
	at      time.Time
	client  string
	version int64
}

// tokenWrites returns every write of tokenKey, in the order the server
// executed them. Scripts' commands follow the script's own line.
func tokenWrites(lines []monLine, tokenKey string) []tokenWrite {
	var ws []tokenWrite
	caller := ""
	for _, l := range lines {
		if l.client != "lua" {
			caller = l.client
			continue
		}
		if len(l.args) >= 3 && strings.EqualFold(l.args[0], "SET") && l.args[1] == tokenKey {
			// The stored format is "1|<version>|<lifetime ms>|<value>".
			parts := strings.SplitN(l.args[2], "|", 3)
			v := int64(-1)
			if len(parts) == 3 {
				v, _ = strconv.ParseInt(parts[1], 10, 64)
			}
			ws = append(ws, tokenWrite{at: l.at, client: caller, version: v})
		}
	}
	return ws
}

// scriptsFrom returns the scripts a client whose address starts with host
// ran after t, and how many of them wrote tokenKey.
func scriptsFrom(lines []monLine, host string, after time.Time, tokenKey string) (scripts, writes int, saves []string) {
	caller := ""
	for _, l := range lines {
		if l.client != "lua" {
			caller = ""
			if strings.HasPrefix(l.client, host+":") && l.at.After(after) && len(l.args) > 0 &&
				(strings.EqualFold(l.args[0], "EVALSHA") || strings.EqualFold(l.args[0], "EVAL")) {
				caller = l.client
				scripts++
				// The save script's keys are token, fence, backoff: its
				// first argument is the version (informational).
				if len(l.args) > 6 && l.args[2] == "3" && l.args[3] == tokenKey {
					saves = append(saves, l.args[6])
				}
			}
			continue
		}
		if caller != "" && len(l.args) >= 2 && strings.EqualFold(l.args[0], "SET") && l.args[1] == tokenKey {
			writes++
		}
	}
	return
}

// TestPartitionedRefresher: an instance in its own network namespace holds
// the refresh lock mid-fetch (the upstream has issued its token, which
// killed the cluster's) when its link to Redis goes down; its link to the
// upstream stays up, so it gets its token and sends the save into the cut.
// Two instances on the host side, with default Options like it, take over
// within the bound of TestDeadRefresherDefaultOptions; the link comes back;
// the partitioned instance's late write is fenced (every write of the token
// key, as MONITOR sees them, has a newer version than the one before), and
// it serves the cluster's token within a stated bound of the heal.
func TestPartitionedRefresher(t *testing.T) {
	n := newNetns(t)
	rs := startRedis(t, "--bind", "127.0.0.1 "+n.redisHost, "--protected-mode", "no")
	mon := startMonitor(t, rs.addr())
	const (
		goroutines = 16
		lifetime   = 2 * time.Second
		latency    = 100 * time.Millisecond
		// takeoverBound is TestDeadRefresherDefaultOptions' bound: 2 s
		// + one fetch + 300 ms for scheduling.
		takeoverBound = 2*time.Second + latency + 300*time.Millisecond
		// healBound: after the heal, the partitioned instance's next
		// read of Redis must get through. A command sent into the cut
		// waits up to go-redis's ReadTimeout (3 s) before the client
		// drops its connection; a Source whose refresh failed retries
		// after RetryInterval (1 s); 500 ms for scheduling.
		healBound = 3*time.Second + time.Second + 500*time.Millisecond
		giveUp    = 15 * time.Second
	)
	up := tokentest.New(lifetime)
	up.Latency = latency
	// Hold the partitioned instance's first refresh (its first fetch after
	// the cluster's first token).
	hu, srv := serveHeld(t, up, n.listen(n.upHost), func(inst string) bool { return inst == "ns" && up.Issued() >= 1 })
	p := prefix(t)
	tokenKey := "{" + p + "c}:token"
	f := newFleet(t)
	redisPort := strconv.Itoa(rs.port)
	part := f.start("ns", n.exec(), n.redisHost+":"+redisPort, p, srv.URL, goroutines)
	hosts := []*instance{
		f.start("h0", nil, rs.addr(), p, srv.URL, goroutines),
		f.start("h1", nil, rs.addr(), p, srv.URL, goroutines),
	}
	f.waitReady(append(hosts, part)...)
	// Only the partitioned instance has callers until the cut, so that it
	// is the one that refreshes.
	part.send("go")
	var hit heldFetch
	select {
	case hit = <-hu.hits:
	case <-time.After(20 * time.Second):
		t.Fatalf("the partitioned instance did not refresh within 20s: upstream calls %d", up.Calls())
	}
	n.cutRedis()
	cut := time.Now()
	for _, h := range hosts {
		h.send("go")
	}
	close(hit.release) // the token reaches the instance; its save goes into the cut

	tookOver := f.waitUntil(cut.Add(giveUp), func(first map[*instance]map[string]time.Time) bool {
		for _, h := range hosts {
			if _, ok := firstAfter(up, first[h], cut); !ok {
				return false
			}
		}
		return true
	})
	takeover := time.Since(cut)
	n.healRedis()
	healed := time.Now()
	if !tookOver {
		t.Errorf("the host instances did not take over within %v of the cut", giveUp)
	}
	resynced := f.waitUntil(healed.Add(giveUp), func(first map[*instance]map[string]time.Time) bool {
		_, ok := firstAfter(up, first[part], cut)
		return ok
	})
	if resynced {
		time.Sleep(time.Second) // a measurement window: late writes, a relapse to the old token
	}
	partRep := part.stop(t)
	var hostReps []recReport
	for _, h := range hosts {
		hostReps = append(hostReps, h.stop(t))
	}
	lines := mon.snapshot()

	f.mu.Lock()
	var hostWorst time.Duration
	var per []string
	for _, h := range hosts {
		at, ok := firstAfter(up, f.first[h], cut)
		if !ok {
			hostWorst = giveUp
			per = append(per, h.name+" never")
			continue
		}
		hostWorst = max(hostWorst, at.Sub(cut))
		per = append(per, fmt.Sprintf("%s %v", h.name, at.Sub(cut).Round(time.Millisecond)))
	}
	partAt, partOK := firstAfter(up, f.first[part], cut)
	f.mu.Unlock()
	rejoin := giveUp
	if partOK {
		rejoin = partAt.Sub(healed)
	}

	// Fencing, as the server executed it.
	writes := tokenWrites(lines, tokenKey)
	var versions []string
	for i, w := range writes {
		from := "host"
		if strings.HasPrefix(w.client, n.redisNS+":") {
			from = "ns"
		}
		versions = append(versions, fmt.Sprintf("v%d by %s at cut%+v", w.version, from, w.at.Sub(cut).Round(time.Millisecond)))
		if i > 0 && w.version <= writes[i-1].version {
			t.Errorf("token overwritten by an older version: v%d (client %s) after v%d", w.version, w.client, writes[i-1].version)
		}
	}
	nsScripts, nsWrites, lateSaves := scriptsFrom(lines, n.redisNS, healed, tokenKey)
	var hostErrs int64
	var hostFirstErr string
	var hostMaxWait time.Duration
	for _, r := range hostReps {
		hostErrs += r.Errors
		if hostFirstErr == "" {
			hostFirstErr = r.FirstErr
		}
		hostMaxWait = max(hostMaxWait, r.MaxWait)
	}
	_, hostInvalid, _, unknown := handedOut(up, hostReps, cut)
	_, partInvalid, _, unknown2 := handedOut(up, []recReport{partRep}, cut)
	// The partitioned instance's own token, served after the cluster's
	// replaced it.
	t.Logf("partition: held fetch issued %v before the cut; hosts took over %v after the cut (%s; bound %v); link healed %v after the cut; "+
		"partitioned instance served the cluster's token %v after the heal (bound %v); its scripts after the heal: %d, token writes among them %d, late saves (versions) %v; "+
		"token writes: %s; upstream issued %d; hosts: %d errors, %d invalid tokens, max Token wait %v; partitioned: %d calls, %d errors (first: %s), %d invalid tokens, max Token wait %v",
		cut.Sub(hit.issued).Round(time.Millisecond), hostWorst.Round(time.Millisecond), strings.Join(per, ", "), takeoverBound,
		takeover.Round(time.Millisecond), rejoin.Round(time.Millisecond), healBound, nsScripts, nsWrites, lateSaves,
		strings.Join(versions, ", "), up.Issued(), hostErrs, hostInvalid, hostMaxWait.Round(time.Millisecond),
		partRep.Calls, partRep.Errors, partRep.FirstErr, partInvalid, partRep.MaxWait.Round(time.Millisecond))
	if hostWorst > takeoverBound {
		t.Errorf("the host instances held a valid token %v after the cut; want at most %v", hostWorst, takeoverBound)
	}
	if !partOK || rejoin > healBound {
		t.Errorf("the partitioned instance served the cluster's token %v after the heal; want at most %v", rejoin, healBound)
	}
	if hostErrs > 0 {
		t.Errorf("host callers got %d errors, first: %s", hostErrs, hostFirstErr)
	}
	if len(unknown)+len(unknown2) > 0 {
		t.Errorf("callers were handed tokens the upstream never issued")
	}
	// The store ends with the newest version written.
	ctx := context.Background()
	admin := newClient(t, rs.addr())
	written, err := admin.HGet(ctx, "{"+p+"c}:fence", "written").Int64()
	if err != nil {
		t.Fatal(err)
	}
	if len(writes) == 0 || writes[len(writes)-1].version != written {
		t.Errorf("fence written = %d, last token write %v", written, writes)
	}
	// After it served the cluster's token, the partitioned instance never
	// went back to its own (a call under way as it switched may still
	// return it: 50 ms for that, under the race detector).
	if partOK {
		if h := partRep.Hits[hit.tok.Value]; h != nil {
			last := time.UnixMilli(h.Start + int64(len(h.Counts)) - 1)
			if last.After(partAt.Add(50 * time.Millisecond)) {
				t.Errorf("the partitioned instance served its own replaced token %v after it had served the cluster's", last.Sub(partAt))
			}
		}
	}
}

// TestPartitionedSubscription cuts only the subscription of an instance in
// a network namespace: the server closes it (CLIENT KILL), or its packets
// are dropped (iptables in the namespace, on that connection's port: a
// half-open connection). Tokens are long-lived, so only a notification or
// the re-read after re-subscribing can tell the instance about a new token.
// A token written after the cut is served within a stated bound, and one
// written after that within a second: the instance re-subscribed.
func TestPartitionedSubscription(t *testing.T) {
	n := newNetns(t, "iptables")
	rs := startRedis(t, "--bind", "127.0.0.1 "+n.redisHost, "--protected-mode", "no")
	admin := newClient(t, rs.addr())
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	_, srv := serveHeld(t, up, n.listen(n.upHost), nil)
	redisPort := strconv.Itoa(rs.port)

	for _, cut := range []struct {
		name string
		// bound from the cut until a token written right after it is
		// served by the instance.
		bound time.Duration
		do    func(t *testing.T, id, port string)
	}{
		// The instance reads EOF and subscribes again at once; 1 s
		// covers scheduling under the race detector.
		{"killed", time.Second, func(t *testing.T, id, _ string) {
			if err := admin.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err != nil {
				t.Fatal(err)
			}
		}},
		// A quiet subscription pings after 3 s and gives up on a ping
		// unanswered for 3 s more (rediscache's pingEvery): 6 s, + 1 s
		// to subscribe again, re-read and for scheduling.
		{"dropped", 7 * time.Second, func(t *testing.T, _, port string) {
			n.drop(t, "OUTPUT", "-p", "tcp", "--sport", port, "-j", "DROP")
			n.drop(t, "INPUT", "-p", "tcp", "--dport", port, "-j", "DROP")
		}},
	} {
		t.Run(cut.name, func(t *testing.T) {
			p := prefix(t)
			rdb := redis.NewClient(&redis.Options{Addr: rs.addr(), ContextTimeoutEnabled: true})
			t.Cleanup(func() { _ = rdb.Close() })
			host, err := rediscache.NewSource(rdb, "c", up, rediscache.Options{Prefix: p})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = host.Close() })
			t1, err := host.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			f := newFleet(t)
			part := f.start("ns", n.exec(), n.redisHost+":"+redisPort, p, srv.URL, 8)
			f.waitReady(part)
			part.send("go")
			if !f.waitUntil(time.Now().Add(10*time.Second), func(first map[*instance]map[string]time.Time) bool {
				_, ok := first[part][t1.Value]
				return ok
			}) {
				t.Fatal("the instance did not serve the shared token")
			}
			id, port := subscriber(t, admin, n.redisNS, "")
			cut.do(t, id, port)
			cutAt := time.Now()
			// A new token, announced while the instance is not listening.
			written := replace(t, host, t1.Value)
			// served waits for the instance to hand out v and returns
			// how long after from it first did.
			served := func(v string, from time.Time, bound time.Duration) (time.Duration, bool) {
				giveUp := from.Add(bound + 5*time.Second)
				ok := f.waitUntil(giveUp, func(first map[*instance]map[string]time.Time) bool {
					_, ok := first[part][v]
					return ok
				})
				if !ok {
					return giveUp.Sub(from), false
				}
				f.mu.Lock()
				defer f.mu.Unlock()
				return f.first[part][v].Sub(from), true
			}
			resync, ok := served(written.Value, cutAt, cut.bound)
			newID, newPort := subscriber(t, admin, n.redisNS, port)
			// And the next token, heard on the new subscription.
			wroteAt := time.Now()
			again := replace(t, host, written.Value)
			heard, ok2 := served(again.Value, wroteAt, time.Second)
			rep := part.stop(t)
			_, invalid, _, _ := handedOut(up, []recReport{rep}, cutAt)
			t.Logf("subscription %s: subscribed again as client %s (port %s, was %s); token written after the cut served %v after the cut (bound %v); next token served %v after its write; "+
				"instance: %d calls, %d errors, %d invalid tokens handed out, max Token wait %v",
				cut.name, newID, newPort, port, resync.Round(time.Millisecond), cut.bound, heard.Round(time.Millisecond),
				rep.Calls, rep.Errors, invalid, rep.MaxWait.Round(time.Millisecond))
			if !ok || resync > cut.bound {
				t.Errorf("the token written after the cut was served %v after it (served: %v); want at most %v", resync, ok, cut.bound)
			}
			if !ok2 || heard > time.Second {
				t.Errorf("the next token was served %v after its write (served: %v); want at most 1s", heard, ok2)
			}
			if rep.Errors > 0 {
				t.Errorf("%d caller errors, first: %s", rep.Errors, rep.FirstErr)
			}
		})
	}
}

// subscriber waits for the pub/sub client whose address is on host (and
// whose port is not notPort) and returns its ID and port.
func subscriber(t *testing.T, admin *redis.Client, host, notPort string) (id, port string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		list, err := admin.Do(context.Background(), "CLIENT", "LIST", "TYPE", "pubsub").Text()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(list, "\n") {
			f := map[string]string{}
			for _, kv := range strings.Fields(l) {
				k, v, _ := strings.Cut(kv, "=")
				f[k] = v
			}
			h, pt, _ := net.SplitHostPort(f["addr"])
			if h == host && pt != notPort {
				return f["id"], pt
			}
		}
		time.Sleep(10 * time.Millisecond) // polling the server's state
	}
	t.Fatalf("no subscriber from %s", host)
	return "", ""
}

// replace invalidates old and returns the token the host instance fetches
// instead (the strict upstream kills old).
func replace(t *testing.T, host *token.Source, old string) token.Token {
	t.Helper()
	ctx := context.Background()
	if err := host.Invalidate(ctx, old); err != nil {
		t.Fatal(err)
	}
	tok, err := host.Token(ctx)
	if err != nil || tok.Value == old {
		t.Fatalf("after Invalidate: Token = %v, %v", tok, err)
	}
	return tok
}
