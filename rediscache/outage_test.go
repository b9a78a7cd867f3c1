package rediscache_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token"
)

// proxy is a TCP proxy on loopback that can stall (stop forwarding, keep
// connections open) or drop every connection.
type proxy struct {
	l      net.Listener
	target string

	mu      sync.Mutex
	stalled bool
	resume  chan struct{}
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, resume: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// pipe copies src to dst, holding data back while the proxy is stalled.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			stalled, resume := p.stalled, p.resume
			p.mu.Unlock()
			if stalled {
				<-resume
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
	}
}

func (p *proxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

func (p *proxy) unstall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled {
		p.stalled = false
		close(p.resume)
		p.resume = make(chan struct{})
	}
}

// drop closes every connection; new ones are accepted.
func (p *proxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]struct{}{}
}

func (p *proxy) close() {
	p.l.Close()
	p.unstall()
	p.drop()
	p.wg.Wait()
}

// TestRedisOutage stops a real redis-server in the middle of a run: callers
// keep the near-cached token while it is valid, the outage is logged once,
// callers then get ErrStoreUnavailable within their context (no instance
// fetches on its own), and everything recovers when Redis comes back.
func TestRedisOutage(t *testing.T) {
	realRedis(t)
	r := startRedis(t)
	ctx := context.Background()
	const lifetime = 2 * time.Second
	up := newUpstream(lifetime)
	var logs syncBuffer
	o := testOptions(prefix(t))
	o.Source.Logger = jsonLogger(&logs)
	o.Source.RetryInterval = 100 * time.Millisecond
	var srcs []*token.Source
	for range 4 {
		rdb := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond, DialerRetries: 1})
		t.Cleanup(func() { _ = rdb.Close() })
		s := source(t, rdb, o, up)
		srcs = append(srcs, s)
	}
	first, err := srcs[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	last := first.ExpiresAt // the latest any instance holds the token until
	for _, s := range srcs {
		tok, err := s.Token(ctx)
		if err != nil || tok.Value != first.Value {
			t.Fatalf("Token = %v, %v", tok, err)
		}
		if tok.ExpiresAt.After(last) {
			last = tok.ExpiresAt
		}
	}
	r.stop()
	down := time.Now()
	// Until the token expires, every call gets it, though background
	// refreshes fail every RetryInterval once it is due.
	for time.Until(first.ExpiresAt) > 100*time.Millisecond {
		for _, s := range srcs {
			tok, err := s.Token(ctx)
			if err != nil || tok.Value != first.Value {
				t.Fatalf("during the outage, with a valid token: Token = %v, %v", tok, err)
			}
		}
		time.Sleep(5 * time.Millisecond) // callers over time: the subject is the token's life
	}
	time.Sleep(time.Until(last) + 20*time.Millisecond) // on purpose: now nothing valid is left
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err = srcs[1].Token(cctx)
	if !errors.Is(err, token.ErrStoreUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("with no token and no Redis: %v, want ErrStoreUnavailable or the caller's deadline", err)
	}
	if took := time.Since(start); took > 2500*time.Millisecond {
		t.Errorf("Token took %v past the caller's 2s deadline", took)
	}
	// Once per source at most (a source that never needed Redis logs
	// nothing), not once per call or per retry.
	if n := strings.Count(logs.String(), "shared store unavailable"); n < 1 || n > len(srcs) {
		t.Errorf("outage logged %d times by %d sources over %v; want once each at most", n, len(srcs), time.Since(down).Round(time.Millisecond))
	}
	if up.Calls() != 1 {
		t.Errorf("upstream calls during the outage: %d, want none beyond the first", up.Calls()-1)
	}
	// Redis comes back (empty): one fetch, and every instance recovers
	// within a retry interval or so. Until then a caller with no token gets
	// the last store error at once, so callers try again.
	r.start()
	back := time.Now()
	for _, s := range srcs {
		var tok token.Token
		var err error
		scenario.Retry(time.Until(back.Add(10*time.Second)), 10*time.Millisecond, func() bool { // a caller trying again
			tok, err = s.Token(ctx)
			return !errors.Is(err, token.ErrStoreUnavailable)
		})
		if err != nil || !up.Valid(tok.Value) {
			t.Fatalf("after Redis came back: Token = %v, %v", tok, err)
		}
	}
	t.Logf("every instance had a token %v after Redis came back (RetryInterval %v)", time.Since(back).Round(time.Millisecond), o.Source.RetryInterval)
	if up.Issued() != 2 {
		t.Errorf("upstream issued %d tokens, want 2", up.Issued())
	}
	if !strings.Contains(logs.String(), "available again") {
		t.Error("recovery not logged")
	}
	for _, v := range up.Tokens() {
		if strings.Contains(logs.String(), v) {
			t.Error("a whole token was logged")
		}
	}
	if n := strings.Count(logs.String(), "shared store unavailable"); n > len(srcs) {
		t.Errorf("outage logged %d times by %d sources", n, len(srcs))
	}
	t.Logf("outage: %d warnings for %d sources; upstream issued %d", strings.Count(logs.String(), "shared store unavailable"), len(srcs), up.Issued())
}

// TestStalledRedis: a connection that stops answering (not refused) must not
// hang callers: the near-cached token is served without I/O, and a caller
// with no token returns by its own deadline.
func TestStalledRedis(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		if b.Addr == "" {
			t.Skip("the proxy fronts a single server")
		}
		px := newProxy(t, b.Addr)
		ctx := context.Background()
		rdb := redis.NewClient(&redis.Options{Addr: px.addr(), ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond})
		t.Cleanup(func() { _ = rdb.Close() })
		o := testOptions(prefix(t))
		src := source(t, rdb, o, newUpstream(time.Hour))
		tok, err := src.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		other, err := newCache(t, rdb, o).Source("d", newUpstream(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()

		px.stall()
		start := time.Now()
		for range 1000 {
			if got, err := src.Token(ctx); err != nil || got.Value != tok.Value {
				t.Fatalf("near-cached Token during a stall = %v, %v", got, err)
			}
		}
		if took := time.Since(start); took > 100*time.Millisecond {
			t.Errorf("1000 near-cached calls took %v during a stall", took)
		}
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err = other.Token(cctx)
		if took := time.Since(start); err == nil || took > time.Second {
			t.Errorf("a caller with no token during a stall: %v after %v", err, took)
		}
		px.unstall()
		px.drop() // and the stalled connections are gone
		// Callers recover once Redis answers again (a call may still fail
		// on a connection the drop closed).
		deadline := time.Now().Add(10 * time.Second)
		for {
			rctx, cancel2 := context.WithTimeout(ctx, time.Second)
			_, err := other.Token(rctx)
			cancel2()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the stall: %v", err)
			}
		}
	})
}
