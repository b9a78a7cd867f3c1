package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// pingEvery is how long a quiet subscription waits before it pings, so
// that a dead connection is noticed.
const pingEvery = 30 * time.Second

// runWatch prints the events of the prefix's deployment as they arrive,
// until ctx is done: time, kind (refresh, invalidate), credential,
// version. With names, only those credentials' events.
func runWatch(ctx context.Context, cfg *config, args []string, stdout, stderr io.Writer) int {
	names, code, ok := commandFlags(cfg, "watch", "[NAME...]", args, stderr, 0, -1, nil)
	if !ok {
		return code
	}
	for _, n := range names {
		if err := checkName(n); err != nil {
			fmt.Fprintf(stderr, "tokencache watch: %v\n", err)
			return exitError
		}
	}
	c, code := connect(ctx, cfg, stderr)
	if c == nil {
		return code
	}
	defer c.rdb.Close()
	chans := channels(cfg.prefix, c.db, cfg.legacy)
	// The subscription's reads do not end with ctx: closing it does.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sub, err := subscribe(ctx, c, chans, cfg.timeout)
	if err != nil {
		fmt.Fprintf(stderr, "tokencache watch: subscribing to %s on %s: %v\n", strings.Join(chans, ", "), c.addr, err)
		return exitError
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		<-ctx.Done()
		_ = sub.Close()
	}()
	defer func() { cancel(); <-closed }()
	fmt.Fprintf(stderr, "watching %s on %s\n", strings.Join(chans, ", "), c.addr)
	p := printer{w: stdout, names: names, showChannel: len(chans) > 1}
	return receive(ctx, sub, p, stderr)
}

// subscribe subscribes and waits for the server to confirm each channel,
// so that a refusal (an ACL without the channel) is an error here.
func subscribe(ctx context.Context, c *conn, chans []string, timeout time.Duration) (*redis.PubSub, error) {
	sub := c.rdb.Subscribe(ctx, chans...)
	for need := len(chans); need > 0; {
		m, err := sub.ReceiveTimeout(ctx, timeout)
		if err != nil {
			_ = sub.Close()
			return nil, err
		}
		if s, ok := m.(*redis.Subscription); ok && s.Kind == "subscribe" {
			need--
		}
	}
	return sub, nil
}

// receive prints messages until ctx is done. go-redis subscribes again on
// the next receive after a lost connection; the loss is reported.
func receive(ctx context.Context, sub *redis.PubSub, p printer, stderr io.Writer) int {
	for {
		m, err := sub.ReceiveTimeout(ctx, pingEvery)
		if ctx.Err() != nil {
			return exitOK
		}
		var ne net.Error
		switch {
		case err == nil:
		case errors.As(err, &ne) && ne.Timeout():
			_ = sub.Ping(ctx) // a failure shows up as the next receive's error
			continue
		default:
			fmt.Fprintf(stderr, "tokencache watch: %v; subscribing again (events meanwhile are lost)\n", err)
			select {
			case <-ctx.Done():
				return exitOK
			case <-time.After(time.Second):
			}
			continue
		}
		if msg, ok := m.(*redis.Message); ok {
			p.print(msg)
		}
	}
}

// printer writes one line per event.
type printer struct {
	w           io.Writer
	names       []string // only these credentials, if any
	showChannel bool     // several channels: say which
}

// print writes an event, or "malformed" and the payload's length for
// anything else: a payload is never echoed, since it could hold anything.
func (p printer) print(m *redis.Message) {
	at := time.Now().UTC().Format("2006-01-02T15:04:05.000Z")
	suffix := ""
	if p.showChannel {
		suffix = "  (" + m.Channel + ")"
	}
	ev, ok := parseEvent(m.Payload)
	switch {
	case !ok:
		fmt.Fprintf(p.w, "%s  malformed   %d bytes%s\n", at, len(m.Payload), suffix)
	case len(p.names) > 0 && !slices.Contains(p.names, ev.name):
	default:
		fmt.Fprintf(p.w, "%s  %-10s  %s  version %d%s\n", at, ev.kind, ev.name, ev.version, suffix)
	}
}
