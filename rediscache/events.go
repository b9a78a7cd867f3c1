package rediscache

import (
	"context"
	"log/slog"
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
	// maxResubscribeWait caps the wait between attempts to subscribe.
	maxResubscribeWait = 10 * time.Second
	// closeWait bounds how long closing the last Source of a Store waits
	// for the subscription to close.
	closeWait = time.Second
	// maxEventLen bounds a payload: a kind, a version and a name.
	maxEventLen = 2 + 20 + 1 + MaxNameLen
)

// channels returns the channels events are published on for rdb and opts.
func channels(rdb redis.UniversalClient, opts Options) []string {
	legacy := opts.Prefix + "events"
	db := dbOf(rdb)
	if db == 0 {
		return []string{legacy}
	}
	own := legacy + ":db" + strconv.Itoa(db)
	if opts.LegacyEvents {
		return []string{own, legacy}
	}
	return []string{own}
}

// dbOf returns the DB rdb selects. A client type other than *redis.Client
// (standalone or Sentinel), *redis.Ring or *redis.ClusterClient counts as
// DB 0.
func dbOf(rdb redis.UniversalClient) int {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().DB
	case *redis.Ring:
		return c.Options().DB
	}
	return 0
}

// publishTo appends the channels to a script's arguments.
func (s *Store) publishTo(args []any) []any {
	for _, ch := range s.channels {
		args = append(args, ch)
	}
	return args
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
func (s *Store) watch(name string, fn func(token.Event)) (stop func()) {
	w := &watcher{fn: fn}
	s.mu.Lock()
	set := s.watchers[name]
	if set == nil {
		set = make(map[*watcher]struct{})
		s.watchers[name] = set
	}
	set[w] = struct{}{}
	s.n++
	if s.stopSub == nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.stopSub, s.subDone = cancel, make(chan struct{})
		go s.listen(ctx, s.subDone)
	}
	deaf := s.deaf
	s.mu.Unlock()
	if deaf {
		fn(token.Event{Kind: token.Unsubscribed})
	}
	var once sync.Once
	return func() { once.Do(func() { s.unwatch(name, w) }) }
}

// unwatch removes w and, with the last watcher, stops the listener, waiting
// for it at most closeWait: an unanswered socket must not hold up Close.
func (s *Store) unwatch(name string, w *watcher) {
	s.mu.Lock()
	delete(s.watchers[name], w)
	if len(s.watchers[name]) == 0 {
		delete(s.watchers, name)
	}
	s.n--
	var stop context.CancelFunc
	var done chan struct{}
	if s.n == 0 {
		stop, done = s.stopSub, s.subDone
		s.stopSub, s.subDone, s.deaf = nil, nil, false
	}
	s.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("tokencache: the subscription is still closing; it ends when Redis answers or times out")
	}
}

// listen subscribes and dispatches events until ctx is done. A
// subscription that was refused, or not confirmed in time, is retried with
// a growing wait; meanwhile watchers are told Unsubscribed, and re-read on
// demand.
func (s *Store) listen(ctx context.Context, done chan struct{}) {
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
					slog.Any("channels", s.channels), slog.Any("error", err))
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
		s.consume(ctx, sub)
	}
}

// subscribe subscribes to the channels and waits for the server to confirm
// each, so that a refusal (an ACL without +subscribe) is seen.
func (s *Store) subscribe(ctx context.Context) (*redis.PubSub, error) {
	sub := s.rdb.Subscribe(ctx) // no channels: no I/O yet
	if err := sub.Subscribe(ctx, s.channels...); err != nil {
		_ = sub.Close()
		return nil, err
	}
	for need := len(s.channels); need > 0; {
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

// consume dispatches messages until ctx is done or the subscription ends,
// then closes it. go-redis re-subscribes after a disconnect; events
// published before the server confirmed that are lost, so every watcher
// is told to re-read.
func (s *Store) consume(ctx context.Context, sub *redis.PubSub) {
	ch := sub.ChannelWithSubscriptions(redis.WithChannelSize(1024))
	defer func() {
		_ = sub.Close()
		for range ch { // until go-redis's reader has stopped
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" && m.Channel == s.channels[0] {
					s.log.Info("tokencache: subscription re-established; re-reading tokens")
					s.setDeaf(false)
				}
			case *redis.Message:
				s.deliver(m)
			}
		}
	}
}

// setDeaf records whether notifications are unavailable and tells every
// watcher: Unsubscribed, or Resync when they are back (or confirmed).
func (s *Store) setDeaf(deaf bool) {
	s.mu.Lock()
	s.deaf = deaf
	s.mu.Unlock()
	if deaf {
		s.broadcast(token.Event{Kind: token.Unsubscribed})
	} else {
		s.broadcast(token.Event{Kind: token.Resync})
	}
}

func (s *Store) deliver(m *redis.Message) {
	name, ev, ok := parseEvent(m.Payload)
	if !ok {
		s.log.Warn("tokencache: ignoring malformed notification", slog.Int("bytes", len(m.Payload)))
		return
	}
	s.dispatch(name, ev)
}

func (s *Store) dispatch(name string, ev token.Event) {
	s.mu.Lock()
	fns := make([]func(token.Event), 0, len(s.watchers[name]))
	for w := range s.watchers[name] {
		fns = append(fns, w.fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

func (s *Store) broadcast(ev token.Event) {
	s.mu.Lock()
	var fns []func(token.Event)
	for _, set := range s.watchers {
		for w := range set {
			fns = append(fns, w.fn)
		}
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}
