package rediscache

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/token"
)

// Events are "<kind> <version> <name>" with kind r (refreshed) or i
// (invalidated), published on one channel per deployment. The token itself
// is never published.
//
// Redis pub/sub ignores the DB number, so the channel names the DB:
// "<prefix>events" on DB 0 (and on a Cluster, which has only DB 0), and
// "<prefix>events:db<N>" on DB N. Deployments that share a server but not a
// DB and prefix never hear each other. Events are still not trusted: a
// Source checks every announced version against the store (token.Fence).

const (
	// confirmTimeout bounds the wait for the server to confirm a
	// subscription.
	confirmTimeout = 5 * time.Second
	// pingEvery is how long a quiet subscription waits before it pings the
	// server; a ping unanswered for as long again means the connection is
	// dead (half-open), and the Cache subscribes anew.
	pingEvery = 3 * time.Second
	// maxResubscribeWait caps the wait between attempts to subscribe.
	maxResubscribeWait = 10 * time.Second
	// closeWait bounds how long closing the last Source of a Cache waits
	// for the subscription to close.
	closeWait = time.Second
	// maxEventLen bounds a payload: a kind, a version and a name.
	maxEventLen = 2 + 20 + 1 + MaxNameLen
)

// scope knows the channels events are published on. The DB is read from
// the client's options where they say it (*redis.Client, standalone or
// Sentinel; a Cluster, which has only DB 0); for any other client (a
// Sentinel client that routes reads to replicas, a wrapper) it is asked
// once from the server with CLIENT INFO.
type scope struct {
	rdb    redis.UniversalClient
	prefix string
	legacy bool
	log    *slog.Logger

	mu    sync.Mutex // guards known
	known []string   // nil until resolved
}

func newScope(rdb redis.UniversalClient, opts Options) *scope {
	sc := &scope{rdb: rdb, prefix: opts.Prefix, legacy: opts.LegacyEvents, log: opts.Source.Logger}
	if db, ok := dbOf(rdb); ok {
		sc.known = sc.forDB(db)
	}
	return sc
}

// dbOf returns the DB rdb selects, if its options say.
func dbOf(rdb redis.UniversalClient) (int, bool) {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().DB, true
	case *redis.ClusterClient:
		// A failover client that routes to replicas is a ClusterClient
		// with ClusterSlots, and selects its DB on connect.
		return 0, c.Options().ClusterSlots == nil
	}
	return 0, false
}

// forDB returns the channels of a deployment on DB db: its own, then the
// legacy one if Options.LegacyEvents asks for it.
func (sc *scope) forDB(db int) []string {
	legacy := sc.prefix + "events"
	if db == 0 {
		return []string{legacy}
	}
	own := legacy + ":db" + strconv.Itoa(db)
	if sc.legacy {
		return []string{own, legacy}
	}
	return []string{own}
}

// channels returns the channels, asking the server for the DB if the
// client's options do not say. A server that refuses CLIENT INFO (before
// Redis 6.2, or an ACL without +client|info) is taken to be on DB 0, with a
// warning.
func (sc *scope) channels(ctx context.Context) ([]string, error) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.known != nil {
		return sc.known, nil
	}
	info, err := sc.rdb.ClientInfo(ctx).Result()
	var rerr redis.Error
	switch {
	case err == nil:
		sc.known = sc.forDB(info.DB)
	case errors.As(err, &rerr):
		sc.log.Warn("tokencache: cannot tell which DB this client uses (CLIENT INFO refused); events use the DB 0 channel, so give deployments on other DBs of this server another Prefix",
			slog.Any("error", err))
		sc.known = sc.forDB(0)
	default:
		return nil, err
	}
	return sc.known, nil
}

// publishTo appends the channels to a script's arguments.
func (s *Cache) publishTo(ctx context.Context, args []any) ([]any, error) {
	chans, err := s.scope.channels(ctx)
	if err != nil {
		return nil, err
	}
	for _, ch := range chans {
		args = append(args, ch)
	}
	return args, nil
}

// rateLog lets a warning through at most once a minute.
type rateLog struct {
	mu      sync.Mutex // guards last and dropped
	last    time.Time
	dropped int
}

// allow reports whether to log now, and how many were dropped since.
func (r *rateLog) allow() (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.last) >= time.Minute {
		n := r.dropped
		r.last, r.dropped = now, 0
		return true, n
	}
	r.dropped++
	return false, 0
}

func formatEvent(kind byte, version int64, name string) string {
	return string(kind) + " " + strconv.FormatInt(version, 10) + " " + name
}

// parseEvent parses a payload. It accepts only what formatEvent writes for
// a valid name and a positive version.
func parseEvent(p string) (string, token.Event, bool) {
	if len(p) > maxEventLen {
		return "", token.Event{}, false
	}
	k, rest, ok1 := strings.Cut(p, " ")
	v, name, ok2 := strings.Cut(rest, " ")
	version, err := strconv.ParseInt(v, 10, 64)
	if !ok1 || !ok2 || err != nil || version <= 0 || strconv.FormatInt(version, 10) != v || validName(name) != nil {
		return "", token.Event{}, false
	}
	switch k {
	case "r":
		return name, token.Event{Kind: token.Refreshed, Version: version}, true
	case "i":
		return name, token.Event{Kind: token.Invalidated, Version: version}, true
	}
	return "", token.Event{}, false
}

// watch registers fn for name's events, starting the listener with the
// first watcher and stopping it with the last. It does no I/O.
func (s *Cache) watch(name string, fn func(token.Event)) (stop func()) {
	w := &watcher{fn: fn}
	l := &s.listener
	l.mu.Lock()
	set := l.watchers[name]
	if set == nil {
		set = make(map[*watcher]struct{})
		l.watchers[name] = set
	}
	set[w] = struct{}{}
	l.n++
	if l.stop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		l.stop, l.done = cancel, make(chan struct{})
		go s.listen(ctx, l.done)
	}
	if l.deaf {
		// Under the lock, so that a Resync cannot overtake it; fn only
		// records the state.
		fn(token.Event{Kind: token.Unsubscribed})
	}
	l.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { s.unwatch(name, w) }) }
}

// unwatch removes w and, with the last watcher, stops the listener, waiting
// for it at most closeWait: an unanswered socket must not hold up Close.
func (s *Cache) unwatch(name string, w *watcher) {
	l := &s.listener
	l.mu.Lock()
	delete(l.watchers[name], w)
	if len(l.watchers[name]) == 0 {
		delete(l.watchers, name)
	}
	l.n--
	var stop context.CancelFunc
	var done chan struct{}
	var sub *redis.PubSub
	if l.n == 0 {
		stop, done, sub = l.stop, l.done, l.sub
		l.stop, l.done, l.sub, l.deaf = nil, nil, nil, false
	}
	l.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	if sub != nil {
		// Interrupts a blocked receive. Close waits for a dial in progress,
		// so it runs on its own.
		go func() { _ = sub.Close() }()
	}
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("tokencache: the subscription is still closing; it ends when Redis answers or times out")
	}
}

// listen subscribes and dispatches events until ctx is done. A subscription
// that was refused, not confirmed in time, or lost is made anew, with a
// growing wait after failures; until it is confirmed, watchers are told
// Unsubscribed and re-read on demand.
func (s *Cache) listen(ctx context.Context, done chan struct{}) {
	defer close(done)
	wait := time.Second
	failing, confirmed := false, false
	t := time.NewTimer(0)
	defer t.Stop()
	for ctx.Err() == nil {
		sub, err := s.subscribe(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				failing = true
				s.log.Warn("tokencache: notifications unavailable: subscribing failed; tokens are re-read on demand until it succeeds",
					slog.Any("error", err))
			}
			s.setDeaf(true)
			t.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			wait = min(2*wait, maxResubscribeWait)
			continue
		}
		if confirmed || failing {
			s.log.Info("tokencache: subscription established; re-reading tokens")
		}
		failing, confirmed, wait = false, true, time.Second
		s.setDeaf(false)
		err = s.receive(ctx, sub)
		if ctx.Err() != nil {
			return
		}
		// Whatever was published until the next confirmation is lost.
		s.log.Info("tokencache: subscription lost; subscribing again", slog.Any("error", err))
		s.setDeaf(true)
	}
}

// subscribe subscribes to the channels and waits for the server to confirm
// each, so that a refusal (an ACL without +subscribe) is seen.
func (s *Cache) subscribe(ctx context.Context) (*redis.PubSub, error) {
	chans, err := s.scope.channels(ctx)
	if err != nil {
		return nil, err
	}
	sub := s.rdb.Subscribe(ctx, chans...)
	if !s.setSub(sub) {
		_ = sub.Close()
		return nil, context.Canceled
	}
	for need := len(chans); need > 0; {
		m, err := sub.ReceiveTimeout(ctx, confirmTimeout)
		if err != nil {
			_ = sub.Close()
			return nil, err
		}
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				need--
			}
		case *redis.Message:
			s.deliver(m)
		}
	}
	return sub, nil
}

// setSub records the listener's subscription, so that unwatch can close it;
// false if the listener was stopped.
func (s *Cache) setSub(sub *redis.PubSub) bool {
	l := &s.listener
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop == nil {
		return false
	}
	l.sub = sub
	return true
}

// receive dispatches messages until the subscription fails or ctx is done,
// then closes it. It pings a quiet connection, so that a dead one is noticed.
// go-redis would re-subscribe on its own after a disconnect and drop the
// server's answer; receive returns instead, so that listen re-subscribes and
// sees a refusal.
func (s *Cache) receive(ctx context.Context, sub *redis.PubSub) error {
	defer func() { _ = sub.Close() }()
	pinged := false
	for {
		m, err := sub.ReceiveTimeout(ctx, pingEvery)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ne net.Error
		switch {
		case err == nil:
			pinged = false
		case errors.As(err, &ne) && ne.Timeout() && !pinged:
			if err := sub.Ping(ctx); err != nil {
				return err
			}
			pinged = true
			continue
		default:
			return err
		}
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				return errors.New("rediscache: server ended the subscription: " + m.Kind)
			}
		case *redis.Message:
			s.deliver(m)
		}
	}
}

// setDeaf records whether notifications are unavailable and tells every
// watcher: Unsubscribed, or Resync when they are back (or confirmed).
func (s *Cache) setDeaf(deaf bool) {
	l := &s.listener
	l.mu.Lock()
	l.deaf = deaf
	l.mu.Unlock()
	if deaf {
		s.broadcast(token.Event{Kind: token.Unsubscribed})
	} else {
		s.broadcast(token.Event{Kind: token.Resync})
	}
}

func (s *Cache) deliver(m *redis.Message) {
	name, ev, ok := parseEvent(m.Payload)
	if !ok {
		if ok, dropped := s.malformed.allow(); ok {
			s.log.Warn("tokencache: ignoring malformed notifications (logged once a minute)",
				slog.Int("bytes", len(m.Payload)), slog.Int("dropped_since_last", dropped))
		}
		return
	}
	s.dispatch(name, ev)
}

func (s *Cache) dispatch(name string, ev token.Event) {
	l := &s.listener
	l.mu.Lock()
	fns := make([]func(token.Event), 0, len(l.watchers[name]))
	for w := range l.watchers[name] {
		fns = append(fns, w.fn)
	}
	l.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

func (s *Cache) broadcast(ev token.Event) {
	l := &s.listener
	l.mu.Lock()
	var fns []func(token.Event)
	for _, set := range l.watchers {
		for w := range set {
			fns = append(fns, w.fn)
		}
	}
	l.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}
