package rediscache

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limit rations an action across every instance: at most PerDay times a day
// and, after each time, not again for Every. Days are counted on the Redis
// server's clock, shifted by DayOffset (WeChat counts days in UTC+8).
type Limit struct {
	// PerDay is how many times a day the action may run; it must be > 0.
	PerDay int
	// Every is the least time between two runs; 0 means no spacing.
	Every time.Duration
	// DayOffset shifts the day boundary from midnight UTC on the server's
	// clock (8 * time.Hour for WeChat's UTC+8 days).
	DayOffset time.Duration
}

// Limiter enforces a Limit through Redis. It implements wechat.Limiter.
type Limiter struct {
	rdb   redis.UniversalClient
	key   string
	limit Limit
}

// Limiter returns a Limiter for action on the credential called name. Its key
// shares the credential's hash tag: {<prefix><name>}:limit:<action>.
func (s *Cache) Limiter(name, action string, l Limit) (*Limiter, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if err := validName(action); err != nil {
		return nil, fmt.Errorf("action: %w", err)
	}
	if l.PerDay <= 0 {
		return nil, fmt.Errorf("rediscache: limit of %d a day", l.PerDay)
	}
	return &Limiter{rdb: s.rdb, key: "{" + s.opts.Prefix + name + "}:limit:" + action, limit: l}, nil
}

// limitScript counts the action in a hash {day, count, last} if the limit
// allows it; times are the server's, in milliseconds. A key of the wrong
// type is replaced.
var limitScript = redis.NewScript(luaPrelude + `
local kt = keytype(KEYS[1])
if kt ~= 'hash' and kt ~= 'none' then redis.call('DEL', KEYS[1]) end
local now = servertime()
local day = math.floor((now + tonumber(ARGV[3])) / 86400000)
local h = redis.call('HMGET', KEYS[1], 'day', 'count', 'last')
local count = 0
if tonumber(h[1]) == day then count = tonumber(h[2]) or 0 end
local last = tonumber(h[3])
if last and last > now then last = nil end -- from the future: not ours
if count >= tonumber(ARGV[1]) then return 0 end
if last and now - last < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'day', day, 'count', count + 1, 'last', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], 2 * 86400000)
return 1
`)

// Allow reports whether the action may run now and, if so, counts it.
func (l *Limiter) Allow(ctx context.Context) (bool, error) {
	n, err := limitScript.Run(ctx, l.rdb, []string{l.key},
		l.limit.PerDay, l.limit.Every.Milliseconds(), l.limit.DayOffset.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("rediscache: limiter %s: %w", l.key, err)
	}
	return n == 1, nil
}
