package main

// Turning what status read into its report: every field read from Redis
// is checked before it is shown, since the keys may hold anything.

import (
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/lock"
)

const wrongType = "wrong type (not rediscache's)"

func missing(err error) bool { return errors.Is(err, redis.Nil) }

// ttlMS turns a PTTL reply into milliseconds: -1 no expiry, -2 no key.
func ttlMS(c *redis.DurationCmd) int64 {
	d := c.Val()
	if d < 0 {
		return int64(d) // go-redis keeps -1 and -2 as they are
	}
	return d.Milliseconds()
}

func tokenOf(get *redis.StringCmd, ttl *redis.DurationCmd) *tokenState {
	switch {
	case missing(get.Err()):
		return nil
	case isWrongType(get.Err()):
		return &tokenState{Problem: wrongType, TTLMS: ttlMS(ttl)}
	}
	s := &tokenState{TTLMS: ttlMS(ttl)}
	h, err := parseHeader(get.Val())
	if err != nil {
		s.Problem = err.Error()
		return s
	}
	s.Sealed, s.KeyID, s.Version, s.LifetimeMS = h.sealed, h.keyID, h.version, h.lifetimeMS
	if !h.sealed {
		s.Fingerprint = fingerprint(h.secret)
	}
	if s.TTLMS == -1 {
		s.Problem = "no TTL (rediscache always sets one)"
	}
	return s
}

func fenceOf(c *redis.MapStringStringCmd) *fenceState {
	if isWrongType(c.Err()) {
		return &fenceState{Problem: wrongType}
	}
	h := c.Val()
	if len(h) == 0 {
		return nil
	}
	s := &fenceState{}
	var bad bool
	for field, dst := range map[string]*int64{"written": &s.Written, "next": &s.Next, "invalidated": &s.Invalidated} {
		if v, ok := h[field]; ok {
			n, ok := plainInt(v)
			*dst, bad = n, bad || !ok
		}
	}
	if id, ok := h["id"]; ok {
		if validFingerprint(id) {
			s.Identity = id
		} else {
			bad = true
		}
	}
	if bad {
		s.Problem = "fields that are not rediscache's (the next write repairs them)"
	}
	return s
}

func lockOf(get *redis.StringCmd, ttl *redis.DurationCmd) *lockState {
	switch {
	case missing(get.Err()):
		return nil
	case isWrongType(get.Err()):
		return &lockState{Problem: wrongType, TTLMS: ttlMS(ttl)}
	}
	s := &lockState{TTLMS: ttlMS(ttl)}
	meta, ok := lock.MetadataOf(get.Val())
	switch {
	case !ok:
		s.Problem = "not a lock value tokencache writes"
	case s.TTLMS == -1:
		s.Problem = "no TTL: blocks refreshes until a Cache removes it"
	}
	s.Holder = meta
	return s
}

func backoffOf(c *redis.MapStringStringCmd, now time.Time) *backoffState {
	if isWrongType(c.Err()) {
		return &backoffState{Problem: wrongType}
	}
	h := c.Val()
	if len(h) == 0 {
		return nil
	}
	s := &backoffState{}
	s.Failures, _ = plainInt(h["failures"])
	if until, ok := plainInt(h["until"]); ok {
		s.RemainingMS = max(until-now.UnixMilli(), 0)
	}
	s.Class, _ = safeCode(h["class"])
	s.Code, _ = safeCode(h["code"])
	if validFingerprint(h["id"]) {
		s.Identity = h["id"]
	}
	if _, ok := h["err"]; ok {
		// Releases before error classes stored the message, which may hold
		// a secret: say it is there, never what it says.
		s.Problem = "holds an error message from an older release (not shown)"
	}
	return s
}

func orderOf(get *redis.StringCmd, ttl *redis.DurationCmd) *orderState {
	switch {
	case missing(get.Err()):
		return nil
	case isWrongType(get.Err()):
		return &orderState{Problem: wrongType, TTLMS: ttlMS(ttl)}
	}
	s := &orderState{TTLMS: ttlMS(ttl)}
	var ok bool
	if s.Order, ok = plainInt(get.Val()); !ok {
		s.Problem = "not an order rediscache writes"
	}
	return s
}

func refreshOf(gen *redis.StringCmd, has *redis.BoolCmd) *refreshState {
	if isWrongType(gen.Err()) || isWrongType(has.Err()) {
		return &refreshState{Problem: wrongType}
	}
	if missing(gen.Err()) && !has.Val() {
		return nil
	}
	s := &refreshState{Present: has.Val()}
	if !missing(gen.Err()) {
		var ok bool
		if s.Generation, ok = plainInt(gen.Val()); !ok {
			s.Problem = "a generation rediscache does not write"
		}
	}
	return s
}

func limitOf(action string, h map[string]string, err error, now time.Time) limitState {
	s := limitState{Action: action}
	if err != nil {
		s.Problem = wrongType
		return s
	}
	s.Count, _ = plainInt(h["count"])
	if day, ok := plainInt(h["day"]); ok && day < 1<<20 {
		// The limiter's day counts from midnight in its DayOffset's zone,
		// so day×24h as a UTC date is that zone's date.
		s.Day = time.UnixMilli(day * 86400000).UTC().Format(time.DateOnly)
	}
	if last, ok := plainInt(h["last"]); ok && last <= now.UnixMilli() {
		s.LastAgoMS = now.UnixMilli() - last
	}
	return s
}
