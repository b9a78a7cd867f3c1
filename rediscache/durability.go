package rediscache

// Durability of the refresh state: a Credential used as a token.RefreshStore
// keeps each credential's only copy of its rotating refresh token in Redis,
// with no TTL. Losing it (an eviction, a restart without persistence), or
// getting an older copy back (a restart from an RDB snapshot, a failover to
// a replica that had not received the last commit), means the user must
// authorize again. CheckDurability reads what the server's configuration
// says about that; a Cache runs it once, the first time its refresh state
// is used, and logs one warning if Redis may lose the state.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotDurable is matched by the error of CheckDurability when a server's
// configuration lets it lose refresh state: see DurabilityError.
var ErrNotDurable = errors.New("rediscache: Redis may lose refresh state")

// ErrDurabilityUnknown is matched by the error of CheckDurability when a
// server refused to tell its configuration: the ACL user lacks +config|get
// (NOPERM), or a managed service disabled or renamed CONFIG ("unknown
// command"), or the server does not report a setting. Check the
// configuration by other means (the provider's console).
var ErrDurabilityUnknown = errors.New("rediscache: cannot read the Redis configuration to check durability")

// durabilityCheckTimeout bounds the check a Cache runs on the first use of
// its refresh state: it runs inline, under the credential's refresh lock,
// and a server that takes longer for CONFIG GET is in trouble anyway.
const durabilityCheckTimeout = time.Second

// durabilityRetry is how long a Cache waits before running the check again
// after it failed for a reason other than the server's answer (a network
// error, a timeout): a check per refresh would slow every refresh down
// while Redis is slow.
const durabilityRetry = time.Minute

// DurabilityError describes a server whose configuration may lose refresh
// state. It matches ErrNotDurable.
type DurabilityError struct {
	// Addr is the server's address as the client knows it (for a
	// Cluster, the primary's).
	Addr string
	// MaxmemoryPolicy, AppendOnly, AppendFsync and Save are the values
	// of those settings (CONFIG GET).
	MaxmemoryPolicy, AppendOnly, AppendFsync, Save string
}

// Evicts reports whether the maxmemory-policy may evict keys without a TTL,
// such as the refresh state: anything but noeviction and volatile-*.
func (e *DurabilityError) Evicts() bool { return evicts(e.MaxmemoryPolicy) }

// Persistent reports whether every write reaches the append-only file
// within a second: appendonly yes, with appendfsync always or everysec.
// RDB snapshots alone do not count: a restart restores a refresh state
// the upstream has replaced since, and redeeming it fails (or revokes the
// whole authorization at providers with reuse detection).
func (e *DurabilityError) Persistent() bool { return persistent(e.AppendOnly, e.AppendFsync) }

func evicts(policy string) bool {
	return policy != "noeviction" && !strings.HasPrefix(policy, "volatile-")
}

func persistent(appendOnly, fsync string) bool {
	return appendOnly == "yes" && (fsync == "always" || fsync == "everysec")
}

// Error says what is wrong; it holds no secret.
func (e *DurabilityError) Error() string {
	var problems []string
	if e.Evicts() {
		problems = append(problems, fmt.Sprintf("maxmemory-policy %s may evict keys without a TTL (want noeviction or volatile-*)", e.MaxmemoryPolicy))
	}
	if !e.Persistent() {
		problems = append(problems, fmt.Sprintf("appendonly %s, appendfsync %s, save %q: a restart loses or rolls back recent writes (want appendonly yes, appendfsync everysec or always)",
			e.AppendOnly, e.AppendFsync, e.Save))
	}
	return fmt.Sprintf("%v: %s: %s", ErrNotDurable, e.Addr, strings.Join(problems, "; "))
}

// Unwrap returns ErrNotDurable.
func (e *DurabilityError) Unwrap() error { return ErrNotDurable }

// CheckDurability reads the configuration of every server that holds this
// Cache's keys (each primary of a Cluster; the current primary behind
// Sentinel) and reports whether it keeps refresh state (a Credential used
// as a token.RefreshStore) durably. It returns nil if every server has a
// maxmemory-policy of noeviction or volatile-* and appendonly yes with
// appendfsync always or everysec; otherwise an error that matches
// ErrNotDurable (with a *DurabilityError per such server, for errors.As)
// or ErrDurabilityUnknown (a server refused CONFIG GET), or both, joined,
// when servers differ. Any other error (the network, ctx) matches neither:
// the check could not run. It cannot see replication: with replicas, a
// failover can lose a commit the primary acknowledged, unless the commit is
// followed by WAIT (Options.RefreshReplicas).
//
// A Cache runs this check by itself the first time its refresh state is
// used (LoadRefresh or SeedRefresh) and logs one warning if it fails.
func (s *Cache) CheckDurability(ctx context.Context) error {
	cc, ok := s.rdb.(*redis.ClusterClient)
	if !ok {
		return checkServer(ctx, s.rdb, clientAddr(s.rdb))
	}
	var (
		mu   sync.Mutex
		errs []error
	)
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		if err := checkServer(ctx, c, c.Options().Addr); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		return nil
	})
	if err != nil { // the cluster's layout could not be read
		return fmt.Errorf("rediscache: check durability: %w", err)
	}
	return errors.Join(errs...)
}

func clientAddr(rdb redis.UniversalClient) string {
	if c, ok := rdb.(*redis.Client); ok {
		return c.Options().Addr
	}
	return ""
}

// durabilitySettings are the settings CheckDurability reads, in one round
// trip of one CONFIG GET each (several names in one CONFIG GET need Redis 7).
var durabilitySettings = []string{"maxmemory-policy", "appendonly", "appendfsync", "save"}

// checkServer checks one server, which addr names in errors.
func checkServer(ctx context.Context, c redis.Cmdable, addr string) error {
	cmds := make([]*redis.MapStringStringCmd, len(durabilitySettings))
	_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, name := range durabilitySettings {
			cmds[i] = p.ConfigGet(ctx, name)
		}
		return nil
	})
	values := make([]string, len(durabilitySettings))
	for i, cmd := range cmds {
		m, err := cmd.Result()
		var reply redis.Error
		switch {
		case errors.As(err, &reply):
			// NOPERM, or CONFIG disabled or renamed: the server answered,
			// and will answer the same next time.
			return fmt.Errorf("%w: %s: %w", ErrDurabilityUnknown, addr, err)
		case err != nil:
			return fmt.Errorf("rediscache: check durability of %s: %w", addr, err)
		}
		v, ok := m[durabilitySettings[i]]
		if !ok {
			return fmt.Errorf("%w: %s does not report %s", ErrDurabilityUnknown, addr, durabilitySettings[i])
		}
		values[i] = v
	}
	e := &DurabilityError{Addr: addr, MaxmemoryPolicy: values[0], AppendOnly: values[1], AppendFsync: values[2], Save: values[3]}
	if e.Evicts() || !e.Persistent() {
		return e
	}
	return nil
}

// durabilityCheck is a Cache's automatic check: run once, by one caller.
type durabilityCheck struct {
	running atomic.Bool
	done    atomic.Bool
	retryAt atomic.Int64 // unix ns before which a failed check is not run again
}

// checkDurabilityOnce runs CheckDurability the first time the Cache's
// refresh state is used and logs what it found, once per Cache. It runs
// inline, bounded by durabilityCheckTimeout and ctx; callers that arrive
// while it runs, or after it, do not wait. A check that could not run (a
// network error, ctx) is tried again after durabilityRetry.
func (s *Cache) checkDurabilityOnce(ctx context.Context) {
	d := &s.durability
	if d.done.Load() || time.Now().UnixNano() < d.retryAt.Load() || !d.running.CompareAndSwap(false, true) {
		return
	}
	defer d.running.Store(false)
	if d.done.Load() { // another caller finished it meanwhile
		return
	}
	cctx, cancel := context.WithTimeout(ctx, durabilityCheckTimeout)
	defer cancel()
	err := s.CheckDurability(cctx)
	notDurable, unknown := errors.Is(err, ErrNotDurable), errors.Is(err, ErrDurabilityUnknown)
	if err != nil && !notDurable && !unknown {
		d.retryAt.Store(time.Now().Add(durabilityRetry).UnixNano())
		s.log.Debug("tokencache: could not check the durability of the Redis refresh store; will try again", slog.String("error", err.Error()))
		return
	}
	d.done.Store(true)
	s.logDurability(err, notDurable)
}

// durabilityAdvice is how to make Redis keep refresh state.
const durabilityAdvice = "set maxmemory-policy noeviction (or volatile-*), appendonly yes with appendfsync everysec (or always); " +
	"with replicas, set RefreshReplicas (WAIT), or a failover can lose a commit; " +
	"or keep refresh state in a durable store (Options.RefreshStores, e.g. extra/pgrefresh)"

// logDurability logs the outcome of the automatic check: one warning if
// Redis may lose refresh state or would not say.
func (s *Cache) logDurability(err error, notDurable bool) {
	switch {
	case err == nil:
		s.log.Debug("tokencache: the Redis refresh store is configured durably")
	case notDurable:
		s.log.Warn("tokencache: Redis may lose refresh state: a lost or rolled back refresh token means authorizing again",
			slog.String("problem", err.Error()), slog.String("fix", durabilityAdvice))
	default:
		s.log.Warn("tokencache: could not check that Redis keeps refresh state durably (CONFIG GET refused); check the server's configuration yourself",
			slog.String("reason", err.Error()), slog.String("needs", durabilityAdvice))
	}
}
