// Package lock is a distributed lock on Redis, built on
// github.com/bsm/redislock: obtain it with a context and backoff, keep it
// alive while work runs, release it.
//
// The lock has no fencing token of its own: a holder paused longer than the
// TTL loses the lock without knowing. Protect the data the lock guards with a
// version check, as package rediscache does.
package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/bsm/redislock"
)

var (
	// ErrNotObtained is returned when the lock is held by someone else.
	ErrNotObtained = redislock.ErrNotObtained
	// ErrLost is the cause of a Lock's context when the lock expired or its
	// keep-alive failed.
	ErrLost = errors.New("lock: lost")
)

// Client obtains locks.
type Client struct {
	rl *redislock.Client
}

// New returns a Client on a Redis client (any go-redis client: standalone,
// Sentinel or Cluster).
func New(rdb redislock.RedisClient) *Client {
	return &Client{rl: redislock.New(rdb)}
}

// Backoff is the wait between attempts to obtain a held lock: it starts at
// Min and doubles up to Max. The zero value means 10ms to 500ms.
type Backoff struct {
	Min, Max time.Duration
}

// TryObtain obtains the lock at key for ttl without waiting. It returns
// ErrNotObtained if someone else holds it. The Lock stays alive until
// Release, or until ctx is done.
func (c *Client) TryObtain(ctx context.Context, key string, ttl time.Duration) (*Lock, error) {
	return c.obtain(ctx, key, ttl, redislock.NoRetry())
}

// Obtain obtains the lock at key for ttl, retrying with b until ctx is done.
func (c *Client) Obtain(ctx context.Context, key string, ttl time.Duration, b Backoff) (*Lock, error) {
	if b.Min <= 0 {
		b.Min = 10 * time.Millisecond
	}
	if b.Max < b.Min {
		b.Max = max(b.Min, 500*time.Millisecond)
	}
	// A new strategy per call: redislock's strategies keep counters.
	return c.obtain(ctx, key, ttl, redislock.ExponentialBackoff(b.Min, b.Max))
}

func (c *Client) obtain(ctx context.Context, key string, ttl time.Duration, retry redislock.RetryStrategy) (*Lock, error) {
	if ttl < 3*time.Millisecond {
		return nil, fmt.Errorf("lock: ttl %v is too short", ttl)
	}
	// The default random token: a custom one could be a prefix of another
	// holder's and steal its lock.
	l, err := c.rl.Obtain(ctx, key, ttl, &redislock.Options{RetryStrategy: retry})
	if err != nil {
		return nil, err
	}
	lk := &Lock{l: l, ttl: ttl, done: make(chan struct{})}
	lk.ctx, lk.cancel = context.WithCancelCause(ctx)
	go lk.keepAlive()
	return lk, nil
}

// Lock is a held lock. It refreshes its TTL every third of the TTL until
// Release. When Redis reports another holder, or no refresh has succeeded
// for a whole TTL, the lock is lost and Context is cancelled with cause
// ErrLost.
type Lock struct {
	l      *redislock.Lock
	ttl    time.Duration
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	once   sync.Once
	err    error
}

// Context is done when the lock is lost (cause ErrLost) or released.
func (l *Lock) Context() context.Context { return l.ctx }

// Key returns the locked key.
func (l *Lock) Key() string { return l.l.Key() }

func (l *Lock) keepAlive() {
	defer close(l.done)
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	// The lock is certainly ours until lastOK+ttl. A failed refresh (a slow
	// or broken connection) is retried at the next tick; the lock counts as
	// lost when Redis says another holder has it, or when the TTL has run
	// out since the last refresh that succeeded.
	lastOK := time.Now()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
			sent := time.Now()
			rctx, cancel := context.WithTimeout(l.ctx, l.ttl/2)
			err := l.l.Refresh(rctx, l.ttl, nil)
			cancel()
			switch {
			case l.ctx.Err() != nil:
				return
			case err == nil:
				lastOK = sent
			case errors.Is(err, redislock.ErrNotObtained) || time.Since(lastOK) >= l.ttl:
				l.cancel(ErrLost)
				return
			}
		}
	}
}

// Release stops the keep-alive and releases the lock. It returns
// redislock's ErrLockNotHeld if the lock had expired or been taken over.
// Release is safe to call more than once; later calls return the first
// result.
func (l *Lock) Release(ctx context.Context) error {
	l.once.Do(func() {
		lost := context.Cause(l.ctx) == ErrLost
		l.cancel(context.Canceled)
		<-l.done
		if lost {
			l.err = ErrLost
			return
		}
		l.err = l.l.Release(ctx)
	})
	return l.err
}
