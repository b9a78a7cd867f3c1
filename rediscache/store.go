// Package rediscache shares tokens through Redis: it implements token.Store
// and token.Locker on any go-redis client (standalone, Sentinel or Cluster).
//
// Each credential has three keys that share one hash tag, so scripts that
// touch several of them work on Redis Cluster:
//
//	{<prefix><name>}:token   the token, "1|<version>|<lifetime ms>|<value>", with a TTL
//	{<prefix><name>}:lock    the refresh lock (package lock)
//	{<prefix><name>}:fence   a hash: the last version issued, written and invalidated
//	{<prefix><name>}:backoff a hash: failed refreshes, and until when nobody fetches
//
// Writes are compare-and-set on the version, so a refresher that lost its lock
// can never overwrite a newer token. Every write and invalidation is
// published on one channel, <prefix>events, that all sources of a Store share
// through a single subscription.
package rediscache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/token"
)

// ErrInvalidName is returned for a credential name that is empty, longer than
// MaxNameLen, or holds braces, white space or control characters.
var ErrInvalidName = errors.New("rediscache: invalid credential name")

// MaxNameLen is the longest credential name.
const MaxNameLen = 200

// Options configure a Store. The zero value is ready to use.
type Options struct {
	// Prefix starts every key and the notification channel. Default
	// "tokencache:".
	Prefix string
	// LockTTL is the refresh lock's time to live. The lock is kept alive
	// while a fetch runs, so this bounds how long others wait after a
	// refresher dies, not how long a fetch may take. Default 10s.
	LockTTL time.Duration
	// Encryption, if set, seals tokens at rest with AES-GCM (see Keyring).
	// Nil stores them in clear text: protect Redis with ACLs and TLS.
	Encryption *Keyring
	// Source configures every Source the Store makes. Its zero value takes
	// the defaults documented on token.Options.
	Source token.Options
}

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = "tokencache:"
	}
	if o.LockTTL <= 0 {
		o.LockTTL = 10 * time.Second
	}
	if o.Source.Logger == nil {
		o.Source.Logger = slog.Default()
	}
	return o
}

// Store keeps tokens in Redis. One Store per Redis client serves any number of
// credentials over one pub/sub subscription, which is open while the Store
// has sources.
type Store struct {
	rdb   redis.UniversalClient
	opts  Options
	locks *lock.Client
	log   *slog.Logger
	codec codec
	err   error // from the options, returned by Credential

	mu       sync.Mutex
	watchers map[string]map[*watcher]struct{}
	n        int // watchers in all
	sub      *redis.PubSub
	subDone  chan struct{}
}

type watcher struct{ fn func(token.Event) }

// New returns a Store on rdb. Invalid options (a bad Keyring) make every
// Source and Credential call return the error.
func New(rdb redis.UniversalClient, opts Options) *Store {
	opts = opts.withDefaults()
	c, err := newCodec(opts.Encryption)
	if strings.ContainsAny(opts.Prefix, "{} \t\r\n") {
		// A brace would split the hash tag that keeps a credential's keys
		// in one Cluster slot.
		err = fmt.Errorf("%w: prefix %q holds braces or white space", ErrInvalidName, opts.Prefix)
	}
	return &Store{
		rdb:      rdb,
		opts:     opts,
		locks:    lock.New(rdb),
		log:      opts.Source.Logger,
		codec:    c,
		err:      err,
		watchers: make(map[string]map[*watcher]struct{}),
	}
}

// Source returns a token.Source for the credential called name, which fetches
// with f. Sources of the same name share one token, in this process and in
// every other that uses the same Redis and prefix.
func (s *Store) Source(name string, f token.Fetcher) (*token.Source, error) {
	c, err := s.Credential(name)
	if err != nil {
		return nil, err
	}
	return token.NewSource(name, f, c, c, s.opts.Source), nil
}

// NewSource is New(rdb, opts).Source(name, f): a Source with a Store of its
// own, whose subscription closes with the Source.
func NewSource(rdb redis.UniversalClient, name string, f token.Fetcher, opts Options) (*token.Source, error) {
	return New(rdb, opts).Source(name, f)
}

// Credential returns the token.Store and token.Locker of one credential, for
// use with token.NewSource when a Source needs options of its own.
func (s *Store) Credential(name string) (*Credential, error) {
	if s.err != nil {
		return nil, s.err
	}
	if err := validName(name); err != nil {
		return nil, err
	}
	tag := "{" + s.opts.Prefix + name + "}"
	return &Credential{
		s:       s,
		name:    name,
		token:   tag + ":token",
		lock:    tag + ":lock",
		fence:   tag + ":fence",
		backoff: tag + ":backoff",
	}, nil
}

func validName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: length %d (want 1 to %d)", ErrInvalidName, len(name), MaxNameLen)
	}
	for _, r := range name {
		if r == '{' || r == '}' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("%w: %q holds %q", ErrInvalidName, name, r)
		}
	}
	return nil
}

// Prefix returns the key prefix, with its default filled in.
func (s *Store) Prefix() string { return s.opts.Prefix }

func (s *Store) channel() string { return s.opts.Prefix + "events" }

// watch registers fn for name's events, opening the subscription with the
// first watcher and closing it with the last.
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
	if s.sub == nil {
		s.sub = s.rdb.Subscribe(context.Background(), s.channel())
		s.subDone = make(chan struct{})
		go s.listen(s.sub, s.subDone)
	}
	s.mu.Unlock()

	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.watchers[name], w)
			if len(s.watchers[name]) == 0 {
				delete(s.watchers, name)
			}
			s.n--
			var sub *redis.PubSub
			var done chan struct{}
			if s.n == 0 {
				sub, done = s.sub, s.subDone
				s.sub, s.subDone = nil, nil
			}
			s.mu.Unlock()
			if sub != nil {
				_ = sub.Close()
				<-done
			}
		})
	}
}

// listen dispatches messages until sub is closed. A subscription that was
// re-established after a disconnect may have missed messages, so every
// watcher is told to re-read.
func (s *Store) listen(sub *redis.PubSub, done chan struct{}) {
	defer close(done)
	subscribed := false
	for m := range sub.ChannelWithSubscriptions(redis.WithChannelSize(1024)) {
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			// Events published before the server confirmed the (re)
			// subscription are lost: have every watcher read again.
			if subscribed {
				s.log.Info("tokencache: subscription re-established; re-reading tokens")
			}
			subscribed = true
			s.broadcast(token.Event{Kind: token.Resync})
		case *redis.Message:
			name, ev, ok := parseEvent(m.Payload)
			if !ok {
				s.log.Warn("tokencache: ignoring malformed notification", slog.Int("bytes", len(m.Payload)))
				continue
			}
			s.dispatch(name, ev)
		}
	}
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

// Events are "<kind> <version> <name>" with kind r (refreshed) or i
// (invalidated). The token itself is never published.
func formatEvent(kind byte, version int64, name string) string {
	return string(kind) + " " + strconv.FormatInt(version, 10) + " " + name
}

func parseEvent(p string) (string, token.Event, bool) {
	k, rest, ok1 := strings.Cut(p, " ")
	v, name, ok2 := strings.Cut(rest, " ")
	version, err := strconv.ParseInt(v, 10, 64)
	if !ok1 || !ok2 || err != nil || name == "" {
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

// Credential is one credential's keys in a Store. It implements token.Store
// and token.Locker.
type Credential struct {
	s                           *Store
	name                        string
	token, lock, fence, backoff string
}

var (
	_ token.Store  = (*Credential)(nil)
	_ token.Locker = (*Credential)(nil)
)

// loadScript reads the token and its remaining lifetime atomically; a key of
// another type reads as an empty value, which decodes as malformed. With no
// token it returns 1 if the last one written was invalidated, else 0.
var loadScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t.ok end
if t == 'none' then
  local f = redis.call('HMGET', KEYS[2], 'written', 'invalidated')
  if f[1] and f[1] == f[2] then return 1 end
  return 0
end
if t ~= 'string' then return {'', -1} end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
`)

// Load implements token.Store.
func (c *Credential) Load(ctx context.Context) (token.Shared, error) {
	v, err := loadScript.Run(ctx, c.s.rdb, []string{c.token, c.fence}).Result()
	if err != nil {
		return token.Shared{}, fmt.Errorf("rediscache: load %s: %w", c.name, err)
	}
	res, ok := v.([]any)
	if !ok || len(res) != 2 {
		if n, _ := v.(int64); n == 1 {
			return token.Shared{}, fmt.Errorf("%w: %w", token.ErrNotFound, token.ErrInvalidated)
		}
		return token.Shared{}, token.ErrNotFound
	}
	raw, _ := res[0].(string)
	pttl, _ := res[1].(int64)
	version, lifetime, value, err := c.s.codec.decode(c.name, raw)
	if err != nil {
		return token.Shared{}, fmt.Errorf("rediscache: load %s: %w", c.name, err)
	}
	if pttl <= 0 {
		// -1: a value without expiry is not ours; -2: gone meanwhile.
		return token.Shared{}, fmt.Errorf("rediscache: load %s: %w: no TTL", c.name, token.ErrMalformed)
	}
	return token.Shared{
		Value:    value,
		Version:  version,
		TTL:      time.Duration(pttl) * time.Millisecond,
		Lifetime: lifetime,
	}, nil
}

// nextVersionScript issues fencing versions: one more than the last, and
// never less than the server's time in milliseconds, so that versions keep
// growing after the keys were flushed or rolled back by a failover.
var nextVersionScript = redis.NewScript(`
local n = redis.call('HINCRBY', KEYS[1], 'next', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > n then
  n = now
  redis.call('HSET', KEYS[1], 'next', string.format('%d', n))
end
return n
`)

// NextVersion implements token.Store.
func (c *Credential) NextVersion(ctx context.Context) (int64, error) {
	n, err := nextVersionScript.Run(ctx, c.s.rdb, []string{c.fence}).Int64()
	if err != nil {
		return 0, fmt.Errorf("rediscache: next version %s: %w", c.name, err)
	}
	return n, nil
}

// saveScript writes the token only if its version is newer than the last
// written one, and publishes the refresh in the same step.
var saveScript = redis.NewScript(`
local written = tonumber(redis.call('HGET', KEYS[2], 'written') or '0')
if tonumber(ARGV[1]) <= written then return 0 end
redis.call('HSET', KEYS[2], 'written', ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
`)

// Save implements token.Store.
func (c *Credential) Save(ctx context.Context, sh token.Shared) error {
	// The decoder rejects absurd lifetimes; store a long-lived token as
	// living maxLifetime.
	sh.TTL, sh.Lifetime = min(sh.TTL, maxLifetime), min(sh.Lifetime, maxLifetime)
	ttl := sh.TTL.Milliseconds()
	if ttl <= 0 || sh.Version <= 0 || sh.Value == "" {
		return fmt.Errorf("rediscache: save %s: refusing %v with version %d and ttl %v", c.name, token.Token{Value: sh.Value}, sh.Version, sh.TTL)
	}
	ok, err := saveScript.Run(ctx, c.s.rdb, []string{c.token, c.fence, c.backoff},
		sh.Version, c.s.codec.encode(c.name, sh), ttl, c.s.channel(), formatEvent('r', sh.Version, c.name)).Int()
	if err != nil {
		return fmt.Errorf("rediscache: save %s: %w", c.name, err)
	}
	if ok == 0 {
		return fmt.Errorf("rediscache: save %s version %d: %w", c.name, sh.Version, token.ErrFenced)
	}
	return nil
}

// invalidateScript deletes the token only if it still has the given version:
// a token that was already replaced is left alone.
var invalidateScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t.ok end
if t ~= 'string' then return 0 end
local v = redis.call('GET', KEYS[1])
if string.match(v, '^%w|(%d+)|') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'invalidated', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
`)

// Invalidate implements token.Store.
func (c *Credential) Invalidate(ctx context.Context, version int64) (bool, error) {
	n, err := invalidateScript.Run(ctx, c.s.rdb, []string{c.token, c.fence},
		strconv.FormatInt(version, 10), c.s.channel(), formatEvent('i', version, c.name)).Int()
	if err != nil {
		return false, fmt.Errorf("rediscache: invalidate %s: %w", c.name, err)
	}
	return n == 1, nil
}

// loadBackoffScript returns {failures, remaining ms, message}, measured on
// the server's clock.
var loadBackoffScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'failures', 'until', 'err')
if not h[1] then return {0, 0, ''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = (tonumber(h[2]) or 0) - now
if left < 0 then left = 0 end
return {tonumber(h[1]), left, h[3] or ''}
`)

// LoadBackoff implements token.Store.
func (c *Credential) LoadBackoff(ctx context.Context) (token.Backoff, error) {
	res, err := loadBackoffScript.Run(ctx, c.s.rdb, []string{c.backoff}).Slice()
	if err != nil {
		return token.Backoff{}, fmt.Errorf("rediscache: load backoff %s: %w", c.name, err)
	}
	if len(res) != 3 {
		return token.Backoff{}, fmt.Errorf("rediscache: load backoff %s: reply of %d items", c.name, len(res))
	}
	failures, _ := res[0].(int64)
	left, _ := res[1].(int64)
	msg, _ := res[2].(string)
	return token.Backoff{Failures: int(failures), Remaining: time.Duration(left) * time.Millisecond, Err: msg}, nil
}

// saveBackoffScript records a backoff until server time + ARGV[2] ms. The
// record outlives the wait, so that failures keep counting.
var saveBackoffScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'failures', ARGV[1], 'until', string.format('%d', now + tonumber(ARGV[2])), 'err', ARGV[3])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]) + 3600000)
return 1
`)

// SaveBackoff implements token.Store.
func (c *Credential) SaveBackoff(ctx context.Context, b token.Backoff) error {
	msg := b.Err
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	err := saveBackoffScript.Run(ctx, c.s.rdb, []string{c.backoff}, b.Failures, b.Remaining.Milliseconds(), msg).Err()
	if err != nil {
		return fmt.Errorf("rediscache: save backoff %s: %w", c.name, err)
	}
	return nil
}

// Watch implements token.Store.
func (c *Credential) Watch(fn func(token.Event)) (stop func()) {
	return c.s.watch(c.name, fn)
}

// TryLock implements token.Locker with package lock: the lock is kept alive
// until released.
func (c *Credential) TryLock(ctx context.Context) (token.Held, error) {
	l, err := c.s.locks.TryObtain(ctx, c.lock, c.s.opts.LockTTL)
	if errors.Is(err, lock.ErrNotObtained) {
		return nil, token.ErrLocked
	}
	if err != nil {
		return nil, fmt.Errorf("rediscache: lock %s: %w", c.name, err)
	}
	return l, nil
}
