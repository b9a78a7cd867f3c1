package token

// Pushed credentials: values the upstream sends to whichever instance its
// load balancer picks (WeChat Open Platform's component_verify_ticket,
// WeCom's suite_ticket, Feishu/Lark's app_ticket). The receiving instance
// offers the value; the newest by the issuer's own order wins everywhere.

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotPushed is returned (within a *BackoffError on instances that did not
// see it) when a pushed credential is missing or about to expire and no push
// has replaced it. A Source of a pushed credential fetches nothing: its
// Fetcher, made with AwaitPush, can only ask the upstream to push again.
var ErrNotPushed = errors.New("token: waiting for the upstream to push a new value")

// ErrPushTooFarAhead is returned by Offer for a push whose order is more
// than Push.MaxLead ahead of the stored one: a bug or a forgery that would
// otherwise shut out every genuine push until the stored value expires.
var ErrPushTooFarAhead = errors.New("token: pushed value's order is too far ahead of the stored one")

// MaxPushOrder bounds Push.Order: stores compare orders as integers exactly
// representable as doubles (Lua numbers).
const MaxPushOrder = 1<<53 - 1

// Push is a value the upstream pushed to this instance.
type Push struct {
	// Value is the credential, e.g. a component_verify_ticket.
	Value string
	// Order is the issuer's own order of its pushes, greater is newer: its
	// timestamp (WeChat's CreateTime) or sequence number. It is compared only
	// with other pushes' orders, never with a clock. 1 to MaxPushOrder.
	Order int64
	// Lifetime is how long the value is valid, counted from its receipt on
	// the store's clock (not from the issuer's timestamp: clocks are never
	// compared).
	Lifetime time.Duration
	// MaxLead, if positive, refuses a push whose Order is more than MaxLead
	// ahead of the stored one's, with ErrPushTooFarAhead. A provider sets it
	// from its push interval and lifetime, in Order's units. Without it, a
	// forged far-future order holds off genuine pushes until the forged
	// value's Lifetime ends (and no longer: the order expires with it).
	MaxLead int64
}

// An Offerer is a Store that takes pushed values (package rediscache's
// Credential is one).
type Offerer interface {
	// Offer saves sh as Save does, fenced by sh.Version and notifying
	// watchers, unless the value stored last by Offer has an order greater
	// than or equal to p.Order and has not expired: then it saves nothing
	// and returns false. It refuses a p.Order more than p.MaxLead ahead of
	// the stored one with ErrPushTooFarAhead, and a push over a live value
	// saved for another account (Shared.Identity) with ErrIdentityMismatch.
	// The stored order expires with
	// sh.TTL.
	Offer(ctx context.Context, sh Shared, p Push) (bool, error)
}

// Offer shares a value the upstream pushed to this instance, unless a newer
// push (by Push.Order) is already stored: it reports whether p was stored.
// It takes no lock and calls no upstream; a push that arrives late never
// replaces a newer one, on any instance.
func (s *Source) Offer(ctx context.Context, p Push) (bool, error) {
	o, ok := s.store.(Offerer)
	switch {
	case s.life.ctx.Err() != nil:
		return false, ErrClosed
	case !ok:
		return false, fmt.Errorf("%w: %s: the store does not take pushed values", ErrInvalidConfig, s.name)
	case p.Value == "" || p.Lifetime <= 0:
		return false, fmt.Errorf("token: %s: offer: %v living %v: %w", s.name, Token{Value: p.Value}, p.Lifetime, ErrInvalidToken)
	case len(p.Value) > MaxTokenLen:
		return false, fmt.Errorf("token: %s: offer: %w: %d bytes", s.name, ErrTokenTooLarge, len(p.Value))
	case p.Order <= 0 || p.Order > MaxPushOrder:
		return false, fmt.Errorf("token: %s: offer: order %d out of range 1 to %d", s.name, p.Order, int64(MaxPushOrder))
	}
	// A concurrent Save or Offer may take a newer version between ours
	// and the write: try again with a fresh one, a bounded number of times.
	for range 3 {
		version, err := s.store.NextVersion(ctx)
		if err != nil {
			return false, s.storeErr("offer", true, err)
		}
		sh := Shared{Value: p.Value, Version: version, TTL: p.Lifetime, Lifetime: p.Lifetime, Identity: s.accountFP}
		stored, err := o.Offer(ctx, sh, p)
		switch {
		case errors.Is(err, ErrFenced):
			continue
		case errors.Is(err, ErrPushTooFarAhead), errors.Is(err, ErrIdentityMismatch):
			return false, fmt.Errorf("token: %s: offer: %w", s.name, err)
		case err != nil:
			return false, s.storeErr("offer", true, err)
		}
		s.storeUp(true)
		if stored {
			s.adopt(sh, 0)
		}
		return stored, nil
	}
	return false, fmt.Errorf("token: %s: offer: %w three times", s.name, ErrFenced)
}

// AwaitPush returns the Fetcher of a pushed credential. It fetches nothing:
// when the Source needs a new value, it calls request, if not nil, to ask
// the upstream to push again (e.g. WeChat's api_start_push_ticket; ration
// it, e.g. with a rediscache.Limiter), and returns ErrNotPushed. As any
// failed fetch, that puts every instance into the shared backoff (1 s
// doubling to a minute by default), so the cluster asks about once per
// backoff step, not once per caller; callers keep getting the stored value
// while it is valid, and ErrNotPushed (in a *BackoffError) after it
// expires. The next push ends the backoff everywhere.
func AwaitPush(request func(ctx context.Context) error) Fetcher {
	return FetcherFunc(func(ctx context.Context) (Token, error) {
		if request != nil {
			if err := request(ctx); err != nil {
				return Token{}, fmt.Errorf("%w (asking for a push: %w)", ErrNotPushed, err)
			}
		}
		return Token{}, ErrNotPushed
	})
}
