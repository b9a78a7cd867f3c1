// Package lock is a distributed lock on Redis, built on
// github.com/bsm/redislock: try to obtain it without waiting, keep it alive
// while work runs, release it. A caller that finds it held reads the
// guarded data instead of queueing for the lock.
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

// MaxMetadataLen is the longest metadata a lock may carry.
const MaxMetadataLen = 256

// tokenLen is the length of redislock's random token (16 bytes, base64url
// without padding), which starts every lock value.
const tokenLen = 22

// Option configures TryObtain.
type Option func(*options)

type options struct{ meta string }

// WithMetadata stores meta in the lock's value, after its random token, so
// that an operator can see who holds the lock (see MetadataOf). It must be
// printable ASCII, at most MaxMetadataLen bytes, and no secret: anyone who
// can read the key reads it. It plays no part in who holds the lock:
// redislock compares only the token to re-obtain a lock, and the whole
// value (token and metadata) to refresh or release it.
func WithMetadata(meta string) Option { return func(o *options) { o.meta = meta } }

// TryObtain obtains the lock at key for ttl without waiting. It returns
// ErrNotObtained if someone else holds it. The Lock stays alive until
// Release, or until ctx is done.
func (c *Client) TryObtain(ctx context.Context, key string, ttl time.Duration, opts ...Option) (*Lock, error) {
	if ttl < 3*time.Millisecond {
		return nil, fmt.Errorf("lock: ttl %v is too short", ttl)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := checkMetadata(o.meta); err != nil {
		return nil, err
	}
	// The default random token: a custom one could be a prefix of another
	// holder's and steal its lock. Metadata goes after the token, which is
	// all that the obtain script compares.
	l, err := c.rl.Obtain(ctx, key, ttl, &redislock.Options{RetryStrategy: redislock.NoRetry(), Metadata: o.meta})
	if err != nil {
		return nil, err
	}
	lk := &Lock{l: l, ttl: ttl, done: make(chan struct{})}
	lk.ctx, lk.cancel = context.WithCancelCause(ctx)
	go lk.keepAlive()
	return lk, nil
}

// checkMetadata refuses metadata that would make the lock value hard to
// show safely: too long, or not printable ASCII.
func checkMetadata(meta string) error {
	if len(meta) > MaxMetadataLen {
		return fmt.Errorf("lock: metadata of %d bytes (at most %d)", len(meta), MaxMetadataLen)
	}
	for i := 0; i < len(meta); i++ {
		if meta[i] < 0x20 || meta[i] > 0x7e {
			return fmt.Errorf("lock: metadata holds byte %#x at %d (printable ASCII only)", meta[i], i)
		}
	}
	return nil
}

// MetadataOf returns the metadata in value, a lock's value as read from
// Redis, without the random token that precedes it (which is the holder's
// proof of ownership, not something to show). ok is false if value is not
// what TryObtain writes.
func MetadataOf(value string) (meta string, ok bool) {
	if len(value) < tokenLen || len(value) > tokenLen+MaxMetadataLen {
		return "", false
	}
	for i := 0; i < tokenLen; i++ {
		if b := value[i]; !(b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-' || b == '_') {
			return "", false
		}
	}
	meta = value[tokenLen:]
	if checkMetadata(meta) != nil {
		return "", false
	}
	return meta, true
}

// Lock is a held lock. It refreshes its TTL every quarter of the TTL until
// Release. When Redis reports another holder, or no refresh has succeeded
// for nine tenths of the TTL (before anyone else can obtain it), the lock is
// lost and Context is cancelled with cause ErrLost.
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

// Metadata returns the metadata the lock was obtained with (WithMetadata).
func (l *Lock) Metadata() string { return l.l.Metadata() }

func (l *Lock) keepAlive() {
	// The lock is certainly ours until lastOK+ttl (lastOK is when the last
	// successful refresh was sent). Declare it lost a little before that,
	// so that this holder stops before another can start; refresh every
	// quarter TTL so that one slow or failed refresh is not fatal. Each
	// refresh runs in a goroutine of its own, so that the loss is declared
	// on time even when a refresh blocks past its context (a go-redis
	// client without ContextTimeoutEnabled waits for its ReadTimeout).
	margin := l.ttl / 10
	lastOK := time.Now()
	expiry := time.NewTimer(l.ttl - margin)
	defer expiry.Stop()
	tick := time.NewTicker(l.ttl / 4)
	defer tick.Stop()
	type result struct {
		sent time.Time
		err  error
	}
	results := make(chan result, 1)
	inflight := false
	defer func() {
		if inflight {
			<-results // Release waits for the refresh on the wire
		}
		close(l.done)
	}()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-expiry.C:
			l.cancel(ErrLost)
			return
		case <-tick.C:
			if inflight {
				continue
			}
			inflight = true
			sent := time.Now()
			deadline := lastOK.Add(l.ttl - margin)
			go func() {
				rctx, cancel := context.WithDeadline(l.ctx, deadline)
				defer cancel()
				results <- result{sent, l.l.Refresh(rctx, l.ttl, nil)}
			}()
		case r := <-results:
			inflight = false
			switch {
			case l.ctx.Err() != nil:
				return
			case r.err == nil:
				lastOK = r.sent
				expiry.Reset(time.Until(lastOK.Add(l.ttl - margin)))
			case errors.Is(r.err, redislock.ErrNotObtained):
				l.cancel(ErrLost)
				return
			}
		}
	}
}

// Release stops the keep-alive and releases the lock (only if this holder
// still has it: the release compares the lock's random token). It returns
// ErrLost if the keep-alive had found the lock lost, redislock's
// ErrLockNotHeld if it had expired or been taken over meanwhile, or the
// Redis error. Release is safe to call more than once; later calls return
// the first result.
func (l *Lock) Release(ctx context.Context) error {
	l.once.Do(func() {
		lost := context.Cause(l.ctx) == ErrLost
		l.cancel(context.Canceled)
		<-l.done
		// Release even after a loss: a refresh that timed out here may
		// have been applied by Redis, and the key would block everyone
		// for a whole TTL.
		err := l.l.Release(ctx)
		if lost {
			err = ErrLost
		}
		l.err = err
	})
	return l.err
}
