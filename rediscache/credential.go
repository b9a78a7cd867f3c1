package rediscache

// One credential's keys: the token, the fence, the backoff record and the
// lock, each script beside its caller.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/token"
)

// luaPrelude defines the helpers the scripts share.
const luaPrelude = `
local function keytype(k)
  local t = redis.call('TYPE', k)
  if type(t) == 'table' then t = t.ok end
  return t
end
-- servertime is the server's clock in milliseconds.
local function servertime()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- plainint reports whether v is a version this code could have written: a
-- decimal integer below 2^53 (Lua numbers are doubles).
local function plainint(v)
  return v ~= false and v ~= nil and string.match(v, '^%d+$') ~= nil and #v <= 15
end
-- fixfence repairs a fence of the wrong type, or whose version fields are
-- not plain integers: written and next are rebuilt from the stored token's
-- version, or, with no token, from the server's clock, which is above every
-- version issued before (so a late refresher's older version is still
-- refused).
local function fixfence(fk, tk)
  local ft = keytype(fk)
  if ft == 'none' then return end
  if ft == 'hash' then
    local f = redis.call('HMGET', fk, 'written', 'next', 'invalidated')
    if (f[1] == false or plainint(f[1])) and (f[2] == false or plainint(f[2])) and (f[3] == false or plainint(f[3])) then return end
  end
  local id = false
  if ft == 'hash' then id = redis.call('HGET', fk, 'id') end
  redis.call('DEL', fk)
  local v = false
  if keytype(tk) == 'string' then v = string.match(redis.call('GET', tk), '^%w|(%d+)|') end
  if not v or not plainint(v) then v = string.format('%d', servertime()) end
  redis.call('HSET', fk, 'written', v, 'next', v)
  if id then redis.call('HSET', fk, 'id', id) end
end
`

// Credential is one credential's keys in a Cache. It implements token.Store,
// token.Locker and token.Offerer.
type Credential struct {
	s                                  *Cache
	name                               string
	token, lock, fence, backoff, order string
	lockChecked                        atomic.Int64 // unix ns of the last check for a broken lock
}

var (
	_ token.Store   = (*Credential)(nil)
	_ token.Locker  = (*Credential)(nil)
	_ token.Offerer = (*Credential)(nil)
)

// loadScript reads the token, its remaining lifetime and the fence's
// written and invalidated versions in one atomic step:
// {value, pttl, written, invalidated}. pttl is -2 when there is no token
// and -3 when the key holds another type.
var loadScript = redis.NewScript(luaPrelude + `
local w, i, id = '0', '0', ''
if keytype(KEYS[2]) == 'hash' then
  local f = redis.call('HMGET', KEYS[2], 'written', 'invalidated', 'id')
  w, i, id = f[1] or '0', f[2] or '0', f[3] or ''
  if not plainint(w) then w = '0' end
  if not plainint(i) then i = '0' end
end
local t = keytype(KEYS[1])
if t == 'none' then return {'', -2, w, i, id} end
if t ~= 'string' then return {'', -3, w, i, id} end
local v = redis.call('GET', KEYS[1])
if keytype(KEYS[2]) ~= 'hash' then
  -- A fence of the wrong type (repaired by the next write): the token's
  -- own version stands for it.
  w = string.match(v, '^%w|(%d+)|') or '0'
end
return {v, redis.call('PTTL', KEYS[1]), w, i, id}
`)

// Load implements token.Store.
func (c *Credential) Load(ctx context.Context) (token.Shared, error) {
	res, err := loadScript.Run(ctx, c.s.rdb, []string{c.token, c.fence}).Slice()
	if err != nil {
		return token.Shared{}, fmt.Errorf("rediscache: load %s: %w", c.name, err)
	}
	if len(res) != 5 {
		return token.Shared{}, fmt.Errorf("rediscache: load %s: reply of %d items", c.name, len(res))
	}
	raw, _ := res[0].(string)
	pttl, _ := res[1].(int64)
	var f token.Fence
	f.Written, _ = parseVersion(res[2])
	f.Invalidated, _ = parseVersion(res[3])
	id, _ := res[4].(string)
	f.Identity = fp(id)
	miss := token.Shared{Fence: f}
	switch {
	case pttl == -2, pttl == 0:
		// None, or expiring within the millisecond: a plain miss.
		if f.Written > 0 && f.Written == f.Invalidated {
			return miss, fmt.Errorf("%w: %w", token.ErrNotFound, token.ErrInvalidated)
		}
		return miss, token.ErrNotFound
	case pttl == -3:
		return miss, fmt.Errorf("rediscache: load %s: %w: not a string", c.name, token.ErrMalformed)
	case pttl < 0:
		// A value without expiry is not ours.
		return miss, fmt.Errorf("rediscache: load %s: %w: no TTL", c.name, token.ErrMalformed)
	}
	version, lifetime, value, err := c.s.codec.decode(c.name, raw)
	if err != nil {
		return miss, fmt.Errorf("rediscache: load %s: %w", c.name, err)
	}
	return token.Shared{
		Value:    value,
		Version:  version,
		TTL:      time.Duration(pttl) * time.Millisecond,
		Lifetime: lifetime,
		Fence:    f,
	}, nil
}

// validFingerprint reports whether s is what token's fingerprints look
// like (8 or 32 lowercase hex digits); anything else read from Redis is
// ignored.
func validFingerprint(s string) bool {
	if len(s) != 8 && len(s) != 32 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// fp returns id if it is a fingerprint, else "".
func fp(id string) string {
	if !validFingerprint(id) {
		return ""
	}
	return id
}

// parseVersion reads a version field of the fence; anything but a
// non-negative integer reads as 0.
func parseVersion(v any) (int64, bool) {
	s, _ := v.(string)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// nextVersionScript issues fencing versions: one more than the last, and
// never less than the server's time in milliseconds, so that versions keep
// growing after the keys were flushed or rolled back by a failover.
var nextVersionScript = redis.NewScript(luaPrelude + `
fixfence(KEYS[1], KEYS[2])
local n = (tonumber(redis.call('HGET', KEYS[1], 'next')) or 0) + 1
local now = servertime()
if now > n then n = now end
redis.call('HSET', KEYS[1], 'next', string.format('%d', n))
return n
`)

// NextVersion implements token.Store.
func (c *Credential) NextVersion(ctx context.Context) (int64, error) {
	n, err := nextVersionScript.Run(ctx, c.s.rdb, []string{c.fence, c.token}).Int64()
	if err != nil {
		return 0, fmt.Errorf("rediscache: next version %s: %w", c.name, err)
	}
	return n, nil
}

// saveScript writes the token only if its version is newer than the last
// written one, and publishes the refresh in the same step.
var saveScript = redis.NewScript(luaPrelude + `
fixfence(KEYS[2], KEYS[1])
local written = tonumber(redis.call('HGET', KEYS[2], 'written') or '0')
if tonumber(ARGV[1]) <= written then return 0 end
redis.call('HSET', KEYS[2], 'written', ARGV[1])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'id', ARGV[5]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
for i = 6, #ARGV do redis.call('PUBLISH', ARGV[i], ARGV[4]) end
return 1
`)

// offerScript is saveScript for a pushed value: it first refuses an order
// not greater than the stored one (-1), or more than ARGV[7] ahead of it
// (-2), or a push over a live value of another account (-3), and records
// the order with the value's TTL. A stored order that is
// not a plain integer is not ours and is ignored.
var offerScript = redis.NewScript(luaPrelude + `
local o = false
if keytype(KEYS[4]) == 'string' then o = redis.call('GET', KEYS[4]) end
-- An order is a decimal integer up to 2^53-1 (token.MaxPushOrder): exact
-- as a Lua number. Anything else there is not ours and is ignored.
local function plainorder(v)
  return v ~= false and string.match(v, '^%d+$') ~= nil and #v <= 16 and tonumber(v) <= 9007199254740991
end
if plainorder(o) then
  if tonumber(ARGV[6]) <= tonumber(o) then return -1 end
  if tonumber(ARGV[7]) > 0 and tonumber(ARGV[6]) - tonumber(o) > tonumber(ARGV[7]) then return -2 end
end
fixfence(KEYS[2], KEYS[1])
-- A live value of another account is not replaced by a push (-3), as a
-- fetch does not replace it either.
if ARGV[5] ~= '' and keytype(KEYS[1]) == 'string' then
  local id = redis.call('HGET', KEYS[2], 'id')
  if id and id ~= '' and id ~= ARGV[5] then return -3 end
end
local written = tonumber(redis.call('HGET', KEYS[2], 'written') or '0')
if tonumber(ARGV[1]) <= written then return 0 end
redis.call('HSET', KEYS[2], 'written', ARGV[1])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'id', ARGV[5]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
for i = 8, #ARGV do redis.call('PUBLISH', ARGV[i], ARGV[4]) end
return 1
`)

// Offer implements token.Offerer.
func (c *Credential) Offer(ctx context.Context, sh token.Shared, p token.Push) (bool, error) {
	v, ttl, err := c.encode("offer", sh)
	if err != nil {
		return false, err
	}
	args, err := c.s.publishTo(ctx, []any{sh.Version, v, ttl, formatEvent('r', sh.Version, c.name), fp(sh.Identity), p.Order, max(p.MaxLead, 0)})
	if err != nil {
		return false, fmt.Errorf("rediscache: offer %s: %w", c.name, err)
	}
	res, err := offerScript.Run(ctx, c.s.rdb, []string{c.token, c.fence, c.backoff, c.order}, args...).Int()
	switch {
	case err != nil:
		return false, fmt.Errorf("rediscache: offer %s: %w", c.name, err)
	case res == -1:
		return false, nil
	case res == -2:
		return false, fmt.Errorf("rediscache: offer %s order %d: %w", c.name, p.Order, token.ErrPushTooFarAhead)
	case res == -3:
		return false, fmt.Errorf("rediscache: offer %s: %w", c.name, token.ErrIdentityMismatch)
	case res == 0:
		return false, fmt.Errorf("rediscache: offer %s version %d: %w", c.name, sh.Version, token.ErrFenced)
	}
	return true, nil
}

// encode checks sh for a write (op) and lays it out as stored.
func (c *Credential) encode(op string, sh token.Shared) (string, int64, error) {
	// The decoder rejects absurd lifetimes; store a long-lived token as
	// living MaxLifetime.
	sh.TTL, sh.Lifetime = min(sh.TTL, MaxLifetime), min(sh.Lifetime, MaxLifetime)
	ttl := sh.TTL.Milliseconds()
	if ttl <= 0 || sh.Version <= 0 || sh.Value == "" {
		return "", 0, fmt.Errorf("rediscache: %s %s: refusing %v with version %d and ttl %v", op, c.name, token.Token{Value: sh.Value}, sh.Version, sh.TTL)
	}
	v := c.s.codec.encode(c.name, sh)
	if len(sh.Value) > token.MaxTokenLen || len(v) > maxValueLen {
		// Loads would call it malformed, and every instance would fetch.
		return "", 0, fmt.Errorf("rediscache: %s %s: %w: %d bytes", op, c.name, token.ErrTokenTooLarge, len(sh.Value))
	}
	return v, ttl, nil
}

// Save implements token.Store.
func (c *Credential) Save(ctx context.Context, sh token.Shared) error {
	v, ttl, err := c.encode("save", sh)
	if err != nil {
		return err
	}
	args, err := c.s.publishTo(ctx, []any{sh.Version, v, ttl, formatEvent('r', sh.Version, c.name), fp(sh.Identity)})
	if err != nil {
		return fmt.Errorf("rediscache: save %s: %w", c.name, err)
	}
	ok, err := saveScript.Run(ctx, c.s.rdb, []string{c.token, c.fence, c.backoff}, args...).Int()
	if err != nil {
		return fmt.Errorf("rediscache: save %s: %w", c.name, err)
	}
	if ok == 0 {
		return fmt.Errorf("rediscache: save %s version %d: %w", c.name, sh.Version, token.ErrFenced)
	}
	return nil
}

// invalidateScript deletes the token only if it still has the given version:
// a token that was already replaced is left alone. A token in its last
// millisecond (PTTL 0) is gone to Load, so it is not removed either.
var invalidateScript = redis.NewScript(luaPrelude + `
fixfence(KEYS[2], KEYS[1])
if keytype(KEYS[1]) ~= 'string' then return 0 end
if redis.call('PTTL', KEYS[1]) == 0 then return 0 end
local v = redis.call('GET', KEYS[1])
if string.match(v, '^%w|(%d+)|') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'invalidated', ARGV[1])
for i = 3, #ARGV do redis.call('PUBLISH', ARGV[i], ARGV[2]) end
return 1
`)

// Invalidate implements token.Store.
func (c *Credential) Invalidate(ctx context.Context, version int64) (bool, error) {
	args, err := c.s.publishTo(ctx, []any{strconv.FormatInt(version, 10), formatEvent('i', version, c.name)})
	if err != nil {
		return false, fmt.Errorf("rediscache: invalidate %s: %w", c.name, err)
	}
	n, err := invalidateScript.Run(ctx, c.s.rdb, []string{c.token, c.fence}, args...).Int()
	if err != nil {
		return false, fmt.Errorf("rediscache: invalidate %s: %w", c.name, err)
	}
	return n == 1, nil
}

// loadBackoffScript returns {failures, remaining ms, class, code},
// measured on the server's clock. A key of the wrong type is removed.
var loadBackoffScript = redis.NewScript(luaPrelude + `
local kt = keytype(KEYS[1])
if kt ~= 'hash' then
  if kt ~= 'none' then redis.call('DEL', KEYS[1]) end
  return {0, 0, '', '', ''}
end
local h = redis.call('HMGET', KEYS[1], 'failures', 'until', 'class', 'code', 'id')
local now = servertime()
local left = (tonumber(h[2]) or 0) - now
if left < 0 then left = 0 end
if left > tonumber(ARGV[1]) then
  -- Longer than any backoff this code records: not ours.
  redis.call('DEL', KEYS[1])
  return {0, 0, '', '', ''}
end
return {tonumber(h[1]) or 0, left, h[3] or '', h[4] or '', h[5] or ''}
`)

// LoadBackoff implements token.Store.
func (c *Credential) LoadBackoff(ctx context.Context) (token.SharedBackoff, error) {
	res, err := loadBackoffScript.Run(ctx, c.s.rdb, []string{c.backoff}, maxBackoff.Milliseconds()).Slice()
	if err != nil {
		return token.SharedBackoff{}, fmt.Errorf("rediscache: load backoff %s: %w", c.name, err)
	}
	if len(res) != 5 {
		return token.SharedBackoff{}, fmt.Errorf("rediscache: load backoff %s: reply of %d items", c.name, len(res))
	}
	failures, _ := res[0].(int64)
	left, _ := res[1].(int64)
	class, _ := res[2].(string)
	code, _ := res[3].(string)
	id, _ := res[4].(string)
	if failures == 0 && left == 0 && class == "" && code == "" && id == "" {
		// No record: nothing failed, so no class to report ("unknown"
		// is for records that lack one).
		return token.SharedBackoff{}, nil
	}
	return token.SharedBackoff{
		Failures:  int(min(max(failures, 0), 1<<20)),
		Remaining: time.Duration(left) * time.Millisecond,
		Class:     cleanClass(class),
		Code:      cleanCode(code),
		Identity:  fp(id),
	}, nil
}

// maxBackoff bounds a backoff: SaveBackoff records no longer one, and a
// record that says longer (forged, or garbage) is removed when read.
const maxBackoff = time.Hour

// cleanClass keeps a class read from Redis if it is one of token's.
func cleanClass(c string) string {
	switch c {
	case token.ClassTemporary, token.ClassPermanent, token.ClassTimeout, token.ClassInvalidToken,
		token.ClassTooLarge, token.ClassTooManyFetches, token.ClassPanic, token.ClassNotPushed,
		token.ClassRefreshRevoked, token.ClassNoRefreshState:
		return c
	}
	return "unknown"
}

// cleanCode keeps a code read from Redis if it is short and plain.
func cleanCode(c string) string {
	if len(c) > 32 || strings.IndexFunc(c, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r))
	}) >= 0 {
		return ""
	}
	return c
}

// saveBackoffScript records a backoff until server time + ARGV[2] ms, or
// removes the record if ARGV[1] and ARGV[2] are 0. The record outlives the
// wait, so that failures keep counting. The 'err' field that releases before
// error classes wrote (a free-form message) is removed.
var saveBackoffScript = redis.NewScript(luaPrelude + `
if keytype(KEYS[1]) ~= 'hash' or (ARGV[1] == '0' and ARGV[2] == '0') then redis.call('DEL', KEYS[1]) end
if ARGV[1] == '0' and ARGV[2] == '0' then return 1 end
local now = servertime()
redis.call('HSET', KEYS[1], 'failures', ARGV[1], 'until', string.format('%d', now + tonumber(ARGV[2])), 'class', ARGV[3], 'code', ARGV[4], 'id', ARGV[5])
redis.call('HDEL', KEYS[1], 'err')
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]) + 3600000)
return 1
`)

// SaveBackoff implements token.Store. The zero SharedBackoff removes the record.
func (c *Credential) SaveBackoff(ctx context.Context, b token.SharedBackoff) error {
	ms := min(max(b.Remaining.Milliseconds(), 0), maxBackoff.Milliseconds())
	err := saveBackoffScript.Run(ctx, c.s.rdb, []string{c.backoff},
		max(b.Failures, 0), ms, cleanClass(b.Class), cleanCode(b.Code), fp(b.Identity)).Err()
	if err != nil {
		return fmt.Errorf("rediscache: save backoff %s: %w", c.name, err)
	}
	return nil
}

// Watch implements token.Store.
func (c *Credential) Watch(fn func(token.Event)) (stop func()) {
	return c.s.watch(c.name, fn)
}

// mayRepairLock rations the check for a broken lock to once per LockTTL, so
// that waiters polling a held lock do not double its traffic.
func (c *Credential) mayRepairLock() bool {
	now := time.Now().UnixNano()
	last := c.lockChecked.Load()
	return now-last >= int64(c.s.opts.LockTTL) && c.lockChecked.CompareAndSwap(last, now)
}

// repairLockScript removes a lock key that package lock cannot have written:
// not a string, or without a TTL.
var repairLockScript = redis.NewScript(luaPrelude + `
local kt = keytype(KEYS[1])
if kt == 'none' then return 0 end
if kt == 'string' and redis.call('PTTL', KEYS[1]) >= 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
`)

// obtain tries the lock once, naming this Cache's instance as its holder
// in the lock's metadata (see Cache.Instance).
func (c *Credential) obtain(ctx context.Context) (*lock.Lock, error) {
	return c.s.locks.TryObtain(ctx, c.lock, c.s.opts.LockTTL, lock.WithMetadata(c.s.instance))
}

// TryLock implements token.Locker with package lock: the lock is kept alive
// until released. The lock's value names the holder (Cache.Instance).
func (c *Credential) TryLock(ctx context.Context) (token.Held, error) {
	l, err := c.obtain(ctx)
	broken := err != nil && (errors.Is(err, lock.ErrNotObtained) || strings.Contains(err.Error(), "WRONGTYPE"))
	if broken && c.mayRepairLock() {
		// A lock of the wrong type or without a TTL is nobody's: it
		// would block every refresh forever.
		if n, rerr := repairLockScript.Run(ctx, c.s.rdb, []string{c.lock}).Int(); rerr == nil && n == 1 {
			c.s.log.Warn("tokencache: removed a refresh lock that was not ours (wrong type or no TTL)", slog.String("credential", c.name))
			l, err = c.obtain(ctx)
		}
	}
	switch {
	case errors.Is(err, lock.ErrNotObtained):
		// How long the holder has left, so that waiters wake as it
		// expires; bounded, as anything read from Redis.
		if pttl, perr := c.s.rdb.PTTL(ctx, c.lock).Result(); perr == nil && pttl > 0 && pttl <= c.s.opts.LockTTL {
			return nil, &token.LockedError{Remaining: pttl}
		}
		return nil, token.ErrLocked
	case err != nil:
		return nil, fmt.Errorf("rediscache: lock %s: %w", c.name, err)
	}
	return l, nil
}
