// Package rediscache shares tokens through Redis: it implements token.Store
// and token.Locker on any go-redis client (standalone, Sentinel or Cluster).
//
// Each credential has these keys, which share one hash tag, so scripts that
// touch several of them work on Redis Cluster:
//
//	{<prefix><name>}:token          the token, "1|<version>|<lifetime ms>|<value>", with a TTL
//	{<prefix><name>}:lock           the refresh lock (package lock), naming its holder (Cache.Instance)
//	{<prefix><name>}:fence          a hash: the last version issued, written and invalidated
//	{<prefix><name>}:backoff        a hash: failed refreshes, and until when nobody fetches
//	{<prefix><name>}:order          the issuer's order of the last pushed value, with its TTL
//	{<prefix><name>}:limit:<action> a hash: a Limiter's count for the day
//	{<prefix><name>}:refresh        a hash: the rotating refresh state, with no TTL
//
// The refresh state (a Credential used as a token.RefreshStore) is the
// only copy of a rotating refresh token: losing it, or getting an older
// one back, means authorizing again. Redis keeps it only with persistence
// that loses no acknowledged write (appendonly yes, appendfsync everysec
// or always; RDB snapshots alone restore a state the upstream has replaced
// since) and a maxmemory-policy that never evicts keys without a TTL
// (noeviction or volatile-*). With replicas, a failover loses a commit the
// replica had not received: set RefreshReplicas (WAIT). A Cache checks the
// configuration the first time its refresh state is used and logs one
// warning (see CheckDurability). Where Redis is a cache, keep the refresh
// state in a durable store (Options.RefreshStores: extra/pgrefresh).
//
// Writes are compare-and-set on the version, so a refresher that lost its lock
// can never overwrite a newer token. Every write and invalidation is
// published on one channel per deployment, that all sources of a Cache share
// through a single subscription: "<prefix>events" on DB 0 (and on a
// Cluster), "<prefix>events:db<N>" on DB N, because Redis pub/sub ignores the
// DB number. What arrives on the channel is not trusted: a Source checks
// every announced version against the fence, read in the same step as the
// token, before it acts on it.
//
// Set ContextTimeoutEnabled in the go-redis options you pass in: without it,
// go-redis waits for its socket timeouts (ReadTimeout, 3 s by default, per
// attempt) even after a caller's context is done. Constructors never wait
// for Redis (the subscription is made in the background), and Close waits
// about a second at most.
package rediscache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// minLockTTL is the shortest LockTTL: the lock is refreshed every quarter
// of it, and a round trip must fit.
const minLockTTL = 100 * time.Millisecond

// MaxNameLen is the longest credential name.
const MaxNameLen = 200

// Options configure a Cache. The zero value is ready to use.
type Options struct {
	// Prefix starts every key and the notification channel. Default
	// "tokencache:".
	Prefix string
	// LockTTL is the refresh lock's time to live. The lock is kept alive
	// (every quarter of it) while a fetch runs, so this bounds how long the
	// others wait after a refresher dies or is cut off, not how long a
	// fetch may take: with the default, a cluster whose refresher was
	// killed mid-fetch has a new token within 2 s plus one fetch. A holder
	// that cannot reach Redis for 0.9 of it (a stall, a failover) loses the
	// lock, and a lost lock can mean a second fetch; fencing still keeps
	// the newest token. Measured with 8 instances × 64 goroutines, CLIENT
	// PAUSE and Sentinel failovers (docs/results.md): 2s loses no lock under
	// load or a 1 s pause; 1s loses about half of them under a 1 s pause;
	// only 5s and more keep the lock through a Sentinel failover. Set 1s
	// for faster recovery if Redis never stalls that long. Default 2s; at
	// least 100ms.
	LockTTL time.Duration
	// Encryption, if set, seals tokens at rest with AES-GCM (see Keyring).
	// Nil stores them in clear text: protect Redis with ACLs and TLS.
	Encryption *Keyring
	// LegacyEvents also publishes and hears events on "<Prefix>events", the
	// channel that releases before DB-scoped channels used on every DB. Set
	// it only while a deployment on a DB other than 0 is upgraded in a
	// rolling deploy, so that old and new instances hear each other; unset
	// it once no old instance runs, because on that channel deployments on
	// other DBs hear each other too. It changes nothing on DB 0 or a
	// Cluster, whose channel is the legacy one.
	LegacyEvents bool
	// RefreshReplicas, if positive, makes every write of refresh state
	// (see token.Redeemer) wait, with WAIT on the connection that wrote it,
	// until that many replicas acknowledge it, for up to
	// RefreshReplicaTimeout: a failover right after the write then cannot
	// lose a state the upstream has already replaced. If fewer acknowledge
	// in time the write stands on the primary and a warning is logged.
	// Default 0: no waiting.
	RefreshReplicas int
	// RefreshReplicaTimeout bounds each wait of RefreshReplicas. Default 1s.
	RefreshReplicaTimeout time.Duration
	// RefreshStores, if set, returns the durable store of each
	// credential's refresh state (see token.Redeemer), such as
	// extra/pgrefresh's Store.RefreshStore. Called once per Source whose
	// Fetcher is a Redeemer. Default: the state is kept in Redis, beside
	// the token. (Source.RefreshStore cannot be used here: it would be one
	// state for every credential of the Cache.)
	RefreshStores func(name string) (token.RefreshStore, error)
	// Source configures every Source the Cache makes. Its zero value takes
	// the defaults documented on token.Options.
	Source token.Options
}

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = "tokencache:"
	}
	if o.LockTTL <= 0 {
		o.LockTTL = 2 * time.Second
	}
	if o.Source.Logger == nil {
		o.Source.Logger = slog.Default()
	}
	if o.RefreshReplicaTimeout <= 0 {
		o.RefreshReplicaTimeout = time.Second
	}
	return o
}

// Cache keeps tokens in Redis. One Cache per Redis client serves any number of
// credentials over one pub/sub subscription, which is open while the Cache
// has sources.
type Cache struct {
	rdb   redis.UniversalClient
	opts  Options
	locks *lock.Client
	log   *slog.Logger
	// instance is who holds a lock this Cache obtained (see Instance).
	instance string
	codec    codec

	scope     *scope  // the channels events are published on
	malformed rateLog // warnings about malformed notifications
	listener  listenerState

	durability durabilityCheck // the automatic check of the refresh store
}

// listenerState is the subscription's state, shared by watch, unwatch and
// the listener goroutine.
type listenerState struct {
	mu       sync.Mutex // guards every field below
	watchers map[string]map[*watcher]struct{}
	n        int                // watchers in all
	stop     context.CancelFunc // stops the listener; nil while none runs
	done     chan struct{}      // closed when the listener has stopped
	sub      *redis.PubSub      // the listener's current subscription, if any
	deaf     bool               // notifications are unavailable
}

type watcher struct{ fn func(token.Event) }

// New returns a Cache on rdb. It does no I/O. It returns an error for
// invalid arguments: a nil client or a *redis.Ring (wrapping
// token.ErrInvalidConfig), a LockTTL under 100ms, a bad Keyring, or a Prefix
// holding braces or white space (wrapping ErrInvalidName).
func New(rdb redis.UniversalClient, opts Options) (*Cache, error) {
	opts = opts.withDefaults()
	switch {
	case rdb == nil:
		return nil, fmt.Errorf("%w: nil Redis client", token.ErrInvalidConfig)
	case isRing(rdb):
		// A Ring shards channels apart from keys: scripts would publish on
		// one shard while the subscription listens on another.
		return nil, fmt.Errorf("%w: rediscache: *redis.Ring is not supported: use a standalone, Sentinel or Cluster client", token.ErrInvalidConfig)
	case strings.ContainsAny(opts.Prefix, "{} \t\r\n"):
		// A brace would split the hash tag that keeps a credential's keys
		// in one Cluster slot.
		return nil, fmt.Errorf("%w: prefix %q holds braces or white space", ErrInvalidName, opts.Prefix)
	case opts.LockTTL < minLockTTL:
		return nil, fmt.Errorf("%w: LockTTL %v is shorter than %v", token.ErrInvalidConfig, opts.LockTTL, minLockTTL)
	case opts.Source.RefreshStore != nil:
		return nil, fmt.Errorf("%w: Source.RefreshStore would hold one refresh state for every credential of the Cache: set RefreshStores", token.ErrInvalidConfig)
	case opts.RefreshReplicas > 0 && !canWait(rdb):
		return nil, fmt.Errorf("%w: RefreshReplicas needs a *redis.Client or *redis.ClusterClient, not %T", token.ErrInvalidConfig, rdb)
	}
	c, err := newCodec(opts.Encryption)
	if err != nil {
		return nil, err
	}
	return &Cache{
		rdb:      rdb,
		opts:     opts,
		locks:    lock.New(rdb),
		instance: newInstance(),
		log:      opts.Source.Logger,
		codec:    c,
		scope:    newScope(rdb, opts),
		listener: listenerState{watchers: make(map[string]map[*watcher]struct{})},
	}, nil
}

func isRing(rdb redis.UniversalClient) bool {
	_, ok := rdb.(*redis.Ring)
	return ok
}

// Source returns a token.Source for the credential called name, which fetches
// with f. Sources of the same name share one token, in this process and in
// every other that uses the same Redis and prefix.
func (s *Cache) Source(name string, f token.Fetcher) (*token.Source, error) {
	c, err := s.Credential(name)
	if err != nil {
		return nil, err
	}
	o := s.opts.Source
	if _, ok := f.(token.Redeemer); ok && s.opts.RefreshStores != nil {
		if o.RefreshStore, err = s.opts.RefreshStores(name); err != nil {
			return nil, fmt.Errorf("rediscache: refresh store of %s: %w", name, err)
		}
	}
	return token.NewSource(name, f, c, c, o)
}

// NewSource is New(rdb, opts).Source(name, f): a Source with a Cache of its
// own, whose subscription closes with the Source.
func NewSource(rdb redis.UniversalClient, name string, f token.Fetcher, opts Options) (*token.Source, error) {
	c, err := New(rdb, opts)
	if err != nil {
		return nil, err
	}
	return c.Source(name, f)
}

// Credential returns the token.Store and token.Locker of one credential, for
// use with token.NewSource when a Source needs options of its own.
func (s *Cache) Credential(name string) (*Credential, error) {
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
		order:   tag + ":order",
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
func (s *Cache) Prefix() string { return s.opts.Prefix }
