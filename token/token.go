// Package token defines a short-lived upstream credential ([Token]), how to
// obtain a new one ([Fetcher]), and [Source]: the coordinator that lets every
// instance of a service share one token per credential.
//
// A Source keeps the token in memory, reads and writes it through a shared
// [Store], and lets exactly one instance refresh it under a [Locker]. The
// package knows nothing about Redis; package rediscache provides the Store and
// Locker most users want. A [Map] holds many credentials, one Source per key,
// made on first use and evicted when idle (map.go).
//
// # How a Source works
//
// A Source is made of parts that each own one concern, one file each:
//
//	nearcache.go  the token served: fresh, ahead (refresh wanted), superseded
//	flight.go     one in-process refresh at a time, that callers join
//	gate.go       the only place that says "not yet": RetryInterval after a
//	              failure, a shared backoff, failures without the store, the
//	              fetch cap
//	protocol.go   one refresh: read -> lock -> re-read -> fetch -> fenced save
//	              -> notify, each attempt ending in a step the loop switches on
//	fetch.go      calling the Fetcher, and validating what it returns
//	events.go     notifications from the store, checked against its fence
//	direct.go     Options.FetchWhenStoreDown
//	outage.go     store outages, logged once
//	refresh.go    rotating refresh state (a Redeemer's): loaded and redeemed
//	              under the lock, committed before or with the token's save
//	push.go       pushed values (Offer), and AwaitPush
//	map.go        Map: a Source per key, evicted when idle
//
// The token moves through these states:
//
//	no token   --Token-->                   refreshing
//	refreshing --read or fetch+save-->      fresh
//	fresh      --refresh-ahead timer-->     ahead: still served, one background refresh
//	fresh, ahead --event: newer or invalidated--> superseded: read again
//	any        --expiry-->                  no token
//	refreshing --failure-->                 gated: callers with no valid token get
//	                                        the gate's error until it opens
//	Unsubscribed event                      tokens are re-read after PollInterval,
//	                                        on demand, until Resync
//
// Nothing that arrives from outside (an event, a stored value, a backoff
// record) is trusted beyond what the store's own fence confirms.
//
// # For store implementers
//
// Users need Token, Fetcher, Source and Options. A store implements Store
// (TokenStore, BackoffStore and Notifier) and Locker with the types in
// store.go (Shared, Fence, Event, SharedBackoff, Held and the errors a store
// returns), and checks itself with tokentest.TestStore. A store of refresh
// state implements RefreshStore (and, if it also keeps the tokens,
// RotationSaver) and checks itself with tokentest.TestRefreshStore.
package token

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Token is a credential handed out by an upstream service.
//
// Printing or logging a Token shows a redacted form; only Value holds the
// secret.
type Token struct {
	// Value is the credential itself, e.g. a WeChat access_token.
	Value string
	// ExpiresAt is when the upstream stops accepting Value, on this
	// process's clock.
	ExpiresAt time.Time
}

// Valid reports whether t has a value and has not expired at now.
func (t Token) Valid(now time.Time) bool {
	return t.Value != "" && now.Before(t.ExpiresAt)
}

// String returns a redacted form of t that is safe to log.
func (t Token) String() string {
	if t.Value == "" {
		return "token.Token{}"
	}
	return fmt.Sprintf("token.Token{Value:%s, ExpiresAt:%s}", Redact(t.Value), t.ExpiresAt.Format(time.RFC3339))
}

// GoString is like String, so that %#v does not print the secret either.
func (t Token) GoString() string { return t.String() }

// Format makes every fmt verb (%v, %+v, %s, %q, ...) print the redacted form.
func (t Token) Format(f fmt.State, verb rune) {
	s := t.String()
	if verb == 'q' {
		s = fmt.Sprintf("%q", s)
	}
	_, _ = f.Write([]byte(s))
}

// LogValue implements slog.LogValuer with the redacted form.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("value", Redact(t.Value)),
		slog.Time("expires_at", t.ExpiresAt),
	)
}

// Redact shortens a secret to a prefix that identifies it in logs without
// revealing it: at most 4 characters, and none of a secret shorter than 12.
func Redact(secret string) string {
	switch {
	case secret == "":
		return `""`
	case len(secret) < 12:
		return fmt.Sprintf("[%d chars]", len(secret))
	default:
		return fmt.Sprintf("%s…[%d chars]", secret[:4], len(secret))
	}
}

// A Fetcher obtains a new token from the upstream service. Each call may
// invalidate the previous token and may count against a quota; a Source calls
// it only while it holds the credential's refresh lock.
//
// Fetch must honour ctx. ExpiresAt must be computed from time.Now (or from
// Options.Now if the Source has one) taken when the request was sent.
type Fetcher interface {
	// Fetch returns a new token, or an error that says why not (see
	// Classify for what every instance learns of it).
	Fetch(ctx context.Context) (Token, error)
}

// FetcherFunc adapts a function to a Fetcher.
type FetcherFunc func(ctx context.Context) (Token, error)

// Fetch calls f(ctx).
func (f FetcherFunc) Fetch(ctx context.Context) (Token, error) { return f(ctx) }
