package token

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Source. The zero value is ready to use; every zero
// field takes the default its comment gives.
type Options struct {
	// RefreshAhead is the fraction of a token's lifetime before its expiry
	// at which it is refreshed. Default 0.2 (a 7200 s token is refreshed
	// 1440 s before it expires). Negative means 0.
	RefreshAhead float64
	// MinRefreshAhead is the floor of the refresh-ahead window. Default 1s.
	// The window is never more than half the lifetime.
	MinRefreshAhead time.Duration
	// FetchTimeout bounds one upstream fetch, counted from the moment the
	// refresh lock is held, whatever the callers' contexts. Default 10s.
	FetchTimeout time.Duration
	// WaitTimeout bounds how long an instance reads and waits for another
	// instance's refresh, whatever the callers' contexts. Default 30s.
	WaitTimeout time.Duration
	// PollInterval is how often an instance that waits for another
	// instance's refresh re-reads the store when no notification arrives.
	// Default 250ms.
	PollInterval time.Duration
	// RetryInterval is how long a Source waits after a failed refresh
	// before it tries again: a Source that still holds a valid token keeps
	// serving it, and while the shared store fails, callers with no valid
	// token get the store's error at once instead of each sending its own
	// requests to a failing store. Default 1s.
	RetryInterval time.Duration
	// Backoff decides how long every instance waits before fetching again
	// after failures consecutive failed fetches, the last with err. The
	// wait is recorded in the shared store, so a failing upstream sees a
	// handful of calls from the whole cluster, not one per instance or
	// caller. Default DefaultBackoff.
	Backoff func(err error, failures int) time.Duration
	// FetchWhenStoreDown lets a Source with no valid token fetch from the
	// upstream itself while the shared store is unavailable (one fetch at a
	// time per Source). Off by default, because then every instance fetches
	// on its own, and with an upstream like WeChat's each fetch invalidates
	// the tokens the others got. When the store answers again, the token is
	// offered to it under a new version and the fenced write decides which
	// token the cluster keeps.
	FetchWhenStoreDown bool
	// Logger receives warnings about failed refreshes and unreadable shared
	// values. Secrets are never logged. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock that turns a fetched Token's ExpiresAt into a
	// lifetime and a shared TTL into ExpiresAt. It must be the clock the
	// Fetcher uses. Default time.Now.
	Now func() time.Time
	// IdentityKey keys the fingerprint of a Fetcher's secret kept in the
	// shared backoff record (see Identity). Every instance of a credential
	// needs the same key; changing it only means that a backoff recorded
	// under the old key does not hold back instances with the new one.
	// Default: none, and the fingerprint is cut to 32 bits; set one (32
	// random bytes) if a secret could be guessed.
	IdentityKey []byte
}

func (o Options) withDefaults() Options {
	if o.RefreshAhead == 0 {
		o.RefreshAhead = 0.2
	}
	if o.RefreshAhead < 0 {
		o.RefreshAhead = 0
	}
	if o.MinRefreshAhead <= 0 {
		o.MinRefreshAhead = time.Second
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 10 * time.Second
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = 30 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 250 * time.Millisecond
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = time.Second
	}
	if o.Backoff == nil {
		o.Backoff = DefaultBackoff
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// DefaultBackoff waits 10 minutes after an error that retrying cannot fix
// (one with a Permanent() bool method that returns true, such as wrong
// credentials or a spent quota), and otherwise 1s, 2s, 4s, ... up to a
// minute, each ±20% so that instances do not retry in step.
func DefaultBackoff(err error, failures int) time.Duration {
	var p interface{ Permanent() bool }
	if errors.As(err, &p) && p.Permanent() {
		return 10 * time.Minute
	}
	d := min(time.Second<<min(max(failures-1, 0), 6), time.Minute)
	return d*4/5 + rand.N(d*2/5+1)
}

// window is the refresh-ahead window of a token with the given lifetime.
func (o Options) window(lifetime time.Duration) time.Duration {
	w := max(time.Duration(o.RefreshAhead*float64(lifetime)), o.MinRefreshAhead)
	return min(w, lifetime/2)
}

// Entry states. An entry is fresh until its refresh-ahead deadline, then
// ahead (valid, refresh wanted) until it expires; superseded means another
// instance announced a newer token or the token was invalidated.
const (
	stateFresh int32 = iota
	stateAhead
	stateSuperseded
)

// entry is the near-cached token. Its state is flipped by a timer, so that
// the hot path reads no clock.
type entry struct {
	tok      Token
	version  int64
	deadline time.Time // expiry on the monotonic clock
	state    atomic.Int32
	bad      atomic.Bool // reported invalid (Invalidate)
	timer    *time.Timer
}

func (e *entry) valid() bool { return e != nil && time.Now().Before(e.deadline) }

// alive reports whether e was not invalidated, given the highest invalidated
// version. Version 0 (fetched without the store) has no version to compare:
// Invalidate marks it bad.
func (e *entry) alive(dead int64) bool {
	return !e.bad.Load() && (e.version == 0 || e.version > dead)
}

// call is one in-process refresh that any number of callers wait for.
type call struct {
	done chan struct{}
	e    *entry // set if err is nil
	err  error
}

// A Source hands out one credential's token, shared with every other
// instance that uses the same Store and Locker.
//
// Token returns the near-cached token without I/O while it is fresh. When it
// enters its refresh-ahead window, one goroutine per instance reads the
// shared store, and one instance per cluster fetches a new token under the
// lock while callers keep getting the valid one. Use a Source from any number
// of goroutines; call Close when done. Make one with NewSource (or
// rediscache): the zero value is not usable.
type Source struct {
	name    string
	fetcher Fetcher
	store   Store
	locker  Locker
	opts    Options
	log     *slog.Logger

	cur atomic.Pointer[entry]
	// dead and seen are the highest versions announced as invalidated and
	// as written. Announcements come from outside and are clamped to the
	// store's Fence when a later read contradicts them (see confirm).
	dead atomic.Int64
	seen atomic.Int64
	// killed is the highest version this Source itself invalidated: unlike
	// dead, it is never clamped.
	killed atomic.Int64
	// deaf is set while the store reports that notifications are not
	// delivered (Unsubscribed): entries are re-read on demand.
	deaf atomic.Bool

	outage     atomic.Int32 // outageNone, outageRead or outageWrite: one log line per outage
	distrusts  atomic.Int64 // unix ns of the last warning about an unconfirmed event
	lifetime   atomic.Int64 // of the last token installed, in ns: bounds fetches per lifetime
	mismatches atomic.Int64 // unix ns of the last error about another account's token

	// accountFP and fetcherFP fingerprint the Fetcher's Identity (see
	// fingerprints); write-once in NewSource.
	accountFP, fetcherFP string
	fetches              fetchLog

	ctx       context.Context
	cancel    context.CancelFunc
	stopWatch func()
	wg        sync.WaitGroup

	closeOnce sync.Once

	// mu guards the fields below it.
	mu      sync.Mutex
	closed  bool
	flight  *call
	again   bool          // an event arrived during the flight: read again
	wake    chan struct{} // closed and replaced on every event
	retryAt time.Time     // no background refresh before this
	// A shared backoff this instance knows of: until then, callers with no
	// valid token get a BackoffError without asking Redis.
	backoffUntil   time.Time
	backoff        Backoff
	backoffCause   error     // the failure, if this instance saw it
	backoffChecked time.Time // when the shared record was last re-read
	// After a store failure or an identity mismatch, callers with no valid
	// token get failErr until retryAt without asking the store again.
	failErr error
	pending *pending // fetched while the store was down
	// directFailures counts failed fetches without the store.
	directFailures int
}

// NewSource returns a Source for the credential called name (used in logs
// and errors) that fetches with f and coordinates through store and locker.
// It does no I/O. It returns an error wrapping ErrInvalidConfig if an
// argument is missing.
func NewSource(name string, f Fetcher, store Store, locker Locker, opts Options) (*Source, error) {
	switch {
	case name == "":
		return nil, fmt.Errorf("%w: empty credential name", ErrInvalidConfig)
	case isNil(f):
		return nil, fmt.Errorf("%w: %s: nil Fetcher", ErrInvalidConfig, name)
	case isNil(store):
		return nil, fmt.Errorf("%w: %s: nil Store", ErrInvalidConfig, name)
	case isNil(locker):
		return nil, fmt.Errorf("%w: %s: nil Locker", ErrInvalidConfig, name)
	}
	opts = opts.withDefaults()
	account, fetcher, err := fingerprints(f, opts.IdentityKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidConfig, name, err)
	}
	s := &Source{
		accountFP: account,
		fetcherFP: fetcher,
		name:      name,
		fetcher:   f,
		store:     store,
		locker:    locker,
		opts:      opts,
		log:       opts.Logger.With(slog.String("credential", name)),
		wake:      make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.stopWatch = store.Watch(s.onEvent)
	return s, nil
}

// Token returns a valid token. While the near-cached token is fresh it does
// no I/O, takes no lock and allocates nothing. Otherwise it may wait, within
// ctx, for a refresh by this or another instance.
func (s *Source) Token(ctx context.Context) (Token, error) {
	if e := s.cur.Load(); e != nil && e.state.Load() == stateFresh {
		return e.tok, nil
	}
	return s.slow(ctx)
}

func (s *Source) slow(ctx context.Context) (Token, error) {
	e := s.cur.Load()
	valid := e.valid()
	if valid && e.state.Load() == stateAhead {
		// Refresh in the background; nobody waits while a token is valid.
		if s.mayRetry() {
			_, _ = s.refresh()
		}
		return e.tok, nil
	}
	if valid && e.alive(s.dead.Load()) && !s.mayRetry() {
		// Superseded, but the refresh that would replace it failed: keep
		// serving it rather than retrying on every call.
		return e.tok, nil
	}
	if !valid || !e.alive(s.dead.Load()) {
		if err := s.notYet(); err != nil && !s.backoffEnded(ctx, err) {
			return Token{}, err
		}
	}
	for {
		c, err := s.refresh()
		if err != nil {
			return Token{}, err
		}
		select {
		case <-c.done:
			if c.err == nil {
				if c.e != nil && c.e.alive(s.dead.Load()) {
					return c.e.tok, nil
				}
				// Invalidated while that refresh ran: wait for the next.
				continue
			}
			if valid && e.valid() && e.alive(s.dead.Load()) {
				// Superseded by a newer token we could not read: the old
				// one is still the best we have.
				return e.tok, nil
			}
			if s.ctx.Err() != nil {
				return Token{}, ErrClosed
			}
			return Token{}, c.err
		case <-ctx.Done():
			return Token{}, ctxErr(fmt.Sprintf("token: %s: waiting for a token", s.name), ctx)
		}
	}
}

// mayRetry reports whether a refresh may start: no failed refresh within
// RetryInterval and no known shared backoff.
func (s *Source) mayRetry() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	return now.After(s.retryAt) && now.After(s.backoffUntil)
}

// notYet returns the error a caller with no valid token gets without any
// I/O: ErrClosed after Close, the shared backoff while it lasts, and the
// store's last error until the retry interval after a store failure ends.
func (s *Source) notYet() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	switch {
	case s.closed:
		return ErrClosed
	case now.Before(s.backoffUntil):
		return s.backoffErrLocked(now)
	case s.failErr != nil && now.Before(s.retryAt):
		return s.failErr
	}
	return nil
}

// isNil reports whether v is nil, or an interface holding a nil pointer,
// func, map, slice or channel (a typed nil, such as a nil
// *wechat.TokenFetcher or FetcherFunc(nil)).
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch r := reflect.ValueOf(v); r.Kind() {
	case reflect.Pointer, reflect.Func, reflect.Map, reflect.Slice, reflect.Chan, reflect.Interface:
		return r.IsNil()
	}
	return false
}

// backoffEnded re-reads the shared backoff record behind err, at most once
// per RetryInterval, and reports whether it has ended: another instance's
// ResetBackoff, or a save, ends it everywhere.
func (s *Source) backoffEnded(ctx context.Context, err error) bool {
	var be *BackoffError
	if !errors.As(err, &be) {
		return false
	}
	s.mu.Lock()
	due := time.Since(s.backoffChecked) >= s.opts.RetryInterval
	if due {
		s.backoffChecked = time.Now()
	}
	s.mu.Unlock()
	if !due {
		return false
	}
	b, lerr := s.store.LoadBackoff(ctx)
	if lerr != nil || (b.Remaining > 0 && (b.Identity == "" || s.fetcherFP == "" || b.Identity == s.fetcherFP)) {
		return false
	}
	s.mu.Lock()
	s.endBackoffLocked()
	s.mu.Unlock()
	return true
}

// ctxErr wraps the error of a done ctx, and its cause if that differs, so
// that both errors.Is(err, context.DeadlineExceeded) and the cause match.
func ctxErr(msg string, ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
		return fmt.Errorf("%s: %w (%w)", msg, ctx.Err(), cause)
	}
	return fmt.Errorf("%s: %w", msg, ctx.Err())
}

// refresh returns the in-process refresh, starting one if none runs.
func (s *Source) refresh() (*call, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.flight != nil {
		return s.flight, nil
	}
	return s.startLocked(), nil
}

func (s *Source) startLocked() *call {
	c := &call{done: make(chan struct{})}
	s.flight = c
	s.again = false
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeoutCause(s.ctx, s.opts.WaitTimeout, ErrRefreshTimeout)
		c.e, c.err = s.run(ctx)
		cancel()
		if c.err != nil && s.ctx.Err() == nil && !errors.Is(c.err, ErrStoreUnavailable) && !errors.Is(c.err, ErrIdentityMismatch) {
			s.log.Warn("tokencache: refresh failed", errAttr(c.err))
		}
		s.mu.Lock()
		s.flight = nil
		s.failErr = nil
		if c.err != nil {
			s.retryAt = time.Now().Add(s.opts.RetryInterval)
			if errors.Is(c.err, ErrStoreUnavailable) || errors.Is(c.err, ErrIdentityMismatch) {
				s.failErr = c.err
			}
		}
		if s.again && !s.closed && c.err == nil {
			s.startLocked()
		}
		s.mu.Unlock()
		close(c.done)
	}()
	return c
}

// run is one refresh: read the store; if the token is not fresh, become the
// refresher or wait for the one that is.
func (s *Source) run(ctx context.Context) (*entry, error) {
	timer := time.NewTimer(s.opts.PollInterval)
	defer timer.Stop()
	for {
		s.mu.Lock()
		wake := s.wake
		s.mu.Unlock()

		r, err := s.load(ctx)
		if err != nil {
			if e := s.cur.Load(); errors.Is(err, ErrStoreUnavailable) && s.opts.FetchWhenStoreDown && (!e.valid() || !e.alive(s.dead.Load())) {
				return s.fetchDirect()
			}
			return nil, err
		}
		if r.have && s.fresh(r.sh) {
			if e := s.adopt(r.sh, 0); e != nil {
				return e, nil
			}
			continue // invalidated meanwhile
		}
		e, next, err := s.attempt(ctx, r)
		switch next {
		case stepDone:
			return e, err
		case stepAgain:
			continue
		}
		timer.Reset(s.opts.PollInterval)
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			return nil, ctxErr(fmt.Sprintf("token: %s: waiting for another instance's refresh", s.name), ctx)
		}
	}
}

// step is what one attempt at the lock decided.
type step int

const (
	stepDone  step = iota // return the entry or the error
	stepAgain             // read the store again at once
	stepWait              // wait for an event or a poll interval, then read again
)

// attempt tries the lock after read r found no fresh token: it refreshes
// under the lock, or serves r's token while another instance refreshes.
func (s *Source) attempt(ctx context.Context, r read) (*entry, step, error) {
	// The lock, and the fetch and save under it, are not bounded by the
	// wait budget: a token the upstream has issued must not be dropped
	// because waiting took long. FetchTimeout bounds them.
	held, err := s.locker.TryLock(s.ctx)
	switch {
	case err == nil:
		s.storeUp(true)
		e, lost, err := s.refreshLocked(ctx, held)
		switch {
		case lost:
			// We lost the lock mid-refresh, so another instance may have
			// taken over: read again and wait for it.
			s.log.Warn("tokencache: refresh lock lost; waiting for another instance", errAttr(err))
			return nil, stepAgain, nil
		case e != nil || err != nil:
			return e, stepDone, err
		}
		// The store holds its newest token, which this Source could not
		// adopt because an event arrived meanwhile: wait for the next
		// event or poll, never fetch over it.
		return nil, stepWait, nil
	case !errors.Is(err, ErrLocked):
		if s.ctx.Err() != nil {
			return nil, stepDone, ErrClosed
		}
		return nil, stepDone, s.storeErr("lock", true, err)
	}
	s.storeUp(true) // a refused lock is a write the store answered
	if !r.have {
		return nil, stepWait, nil
	}
	// Another instance is refreshing and this token is still valid: serve
	// it, and look again after a poll interval if no notification comes
	// first.
	if e := s.adopt(r.sh, s.opts.PollInterval); e != nil {
		return e, stepDone, nil
	}
	return nil, stepAgain, nil // invalidated meanwhile
}

// read is what load found.
type read struct {
	sh Shared
	// have: sh is a usable token (valid, not invalidated, not older than
	// an announced write).
	have bool
	// invalidated: the shared token was invalidated and not replaced.
	invalidated bool
}

// newest reports whether r holds the store's own newest token, valid and not
// invalidated by the store or by this Source: nothing may be fetched over
// it while it is fresh, whatever events said.
func (s *Source) newest(r read) bool {
	f := r.sh.Fence
	return r.sh.Value != "" && r.sh.TTL > 0 && r.sh.Version >= f.Written &&
		r.sh.Version > f.Invalidated && r.sh.Version > s.killed.Load()
}

// load reads the store. A missing, unreadable or invalidated token is a miss.
func (s *Source) load(ctx context.Context) (read, error) {
	// What was announced before the read was sent must be in the store's
	// fence: the store publishes an event only after the write.
	seen, dead := s.seen.Load(), s.dead.Load()
	sh, err := s.store.Load(ctx)
	switch {
	case err == nil:
		s.storeUp(false)
		s.confirm(seen, dead, sh.Fence)
		if err := s.checkIdentity(sh.Fence); err != nil {
			return read{}, err
		}
		dead := sh.Version <= s.dead.Load()
		// A version older than one already announced was read just before
		// the announced write: it is dead upstream, read again.
		have := sh.TTL > 0 && !dead && sh.Version >= s.seen.Load()
		return read{sh: sh, have: have, invalidated: dead}, nil
	case errors.Is(err, ErrNotFound):
		// No live token: whatever account the last one was for, a fetch
		// may replace it (and its identity).
		s.storeUp(false)
		s.confirm(seen, dead, sh.Fence)
		return read{sh: Shared{Fence: sh.Fence}, invalidated: errors.Is(err, ErrInvalidated)}, nil
	case errors.Is(err, ErrMalformed):
		s.storeUp(false)
		s.confirm(seen, dead, sh.Fence)
		s.log.Warn("tokencache: unreadable shared token, treating it as missing", errAttr(err))
		return read{sh: Shared{Fence: sh.Fence}}, nil
	default:
		if ctx.Err() != nil {
			// Our own wait ran out (or Close): not an outage.
			return read{}, ctxErr(fmt.Sprintf("token: %s: read shared token", s.name), ctx)
		}
		return read{}, s.storeErr("read shared token", false, err)
	}
}

// checkIdentity refuses a credential whose last token was saved for another
// account, warning at most once a minute.
func (s *Source) checkIdentity(f Fence) error {
	if f.Identity == "" || s.accountFP == "" || f.Identity == s.accountFP {
		return nil
	}
	now := time.Now().UnixNano()
	if last := s.mismatches.Load(); now-last >= int64(time.Minute) && s.mismatches.CompareAndSwap(last, now) {
		s.log.Error("tokencache: the shared token was fetched for another account: two applications use one credential name; nothing is fetched")
	}
	return fmt.Errorf("token: %s: %w", s.name, ErrIdentityMismatch)
}

// confirm checks the versions announced before a read (seen, dead) against
// the store's fence from that read. An announcement the store contradicts
// was forged, came from another deployment, or was lost with the store's
// data: it is clamped to what the store says, so that it can never make
// this Source refuse the store's token and fetch again.
func (s *Source) confirm(seen, dead int64, f Fence) {
	if seen > f.Written && s.seen.CompareAndSwap(seen, f.Written) {
		s.distrust("refreshed", seen, f.Written)
	}
	if trusted := max(f.Invalidated, s.killed.Load()); dead > trusted && s.dead.CompareAndSwap(dead, trusted) {
		s.distrust("invalidated", dead, trusted)
	}
}

// distrust warns about an unconfirmed event, at most once a minute.
func (s *Source) distrust(kind string, announced, stored int64) {
	now := time.Now().UnixNano()
	last := s.distrusts.Load()
	if now-last < int64(time.Minute) || !s.distrusts.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("tokencache: ignoring a notification the store does not confirm (forged, from another deployment sharing the channel, or lost with the store's data)",
		slog.String("event", kind), slog.Int64("announced_version", announced), slog.Int64("store_version", stored))
}

// pending is a token fetched while the store was unavailable.
type pending struct {
	tok      Shared // Version 0
	deadline time.Time
}

func (s *Source) takePending() *pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending
	s.pending = nil
	return p
}

// fetchDirect fetches without the store (Options.FetchWhenStoreDown), and
// keeps the token to offer the store when it answers again.
func (s *Source) fetchDirect() (*entry, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.FetchTimeout)
	defer cancel()
	tok, err := s.fetch(context.WithValue(ctx, reasonKey{}, ReasonMissing))
	if err == nil {
		err = s.check(tok)
	}
	if err != nil {
		err = fmt.Errorf("token: %s: fetch while the store is unavailable: %w", s.name, err)
		// Without the store the backoff is this instance's own.
		s.mu.Lock()
		s.directFailures++
		n := s.directFailures
		s.mu.Unlock()
		class, code := Classify(err)
		s.backingOff(Backoff{Failures: n, Remaining: s.opts.Backoff(err, n), Class: class, Code: code}, err)
		return nil, err
	}
	ttl := tok.ExpiresAt.Sub(s.opts.Now())
	sh := Shared{Value: tok.Value, TTL: ttl, Lifetime: ttl}
	e := s.install(sh, 0)
	s.mu.Lock()
	s.pending = &pending{tok: sh, deadline: e.deadline}
	s.directFailures = 0
	s.mu.Unlock()
	s.log.Warn("tokencache: fetched a token directly while the shared store is unavailable")
	return e, nil
}

// backingOff remembers a shared backoff, so that callers fail fast without
// asking Redis until it ends, and returns its error. cause is the failure,
// if this instance saw it.
func (s *Source) backingOff(b Backoff, cause error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backoff, s.backoffCause = b, cause
	s.backoffUntil = time.Now().Add(b.Remaining)
	return s.backoffErrLocked(time.Now())
}

// backoffErrLocked is the error of the known backoff, with the time
// actually left at now.
func (s *Source) backoffErrLocked(now time.Time) error {
	b := s.backoff
	return &BackoffError{Failures: b.Failures, Remaining: s.backoffUntil.Sub(now), Class: b.Class, Code: b.Code, cause: s.backoffCause}
}

// endBackoffLocked forgets the known backoff.
func (s *Source) endBackoffLocked() {
	s.backoffUntil, s.backoff, s.backoffCause = time.Time{}, Backoff{}, nil
}

// ResetBackoff ends the shared backoff of this credential on every
// instance, e.g. after a wrong secret was fixed: the next Token that needs a
// token fetches at once. A backoff recorded by a Fetcher of another identity
// does not apply anyway.
func (s *Source) ResetBackoff(ctx context.Context) error {
	if err := s.store.SaveBackoff(ctx, Backoff{}); err != nil {
		return fmt.Errorf("token: %s: reset backoff: %w", s.name, err)
	}
	s.mu.Lock()
	s.endBackoffLocked()
	s.retryAt, s.failErr = time.Time{}, nil
	s.mu.Unlock()
	s.fetches.reset()
	return nil
}

// Outage levels. A store can fail to write while it still reads (out of
// memory, a read-only replica after a failover): an outage that writes
// revealed is over only when a write succeeds.
const (
	outageNone int32 = iota
	outageRead
	outageWrite
)

// storeErr wraps a failure of the shared store in ErrStoreUnavailable and
// logs the outage once, when it starts, whatever operations fail during it.
func (s *Source) storeErr(op string, write bool, err error) error {
	level := outageRead
	if write {
		level = outageWrite
	}
	for s.ctx.Err() == nil {
		old := s.outage.Load()
		if old >= level || !s.outage.CompareAndSwap(old, level) {
			if old >= level {
				break
			}
			continue
		}
		if old == outageNone {
			s.log.Warn("tokencache: shared store unavailable; serving the near-cached token while it is valid",
				slog.String("op", op), errAttr(err))
		}
		break
	}
	return fmt.Errorf("token: %s: %s: %w: %w", s.name, op, ErrStoreUnavailable, err)
}

// storeUp records that the store answered a read or a write, logging the
// end of an outage.
func (s *Source) storeUp(write bool) {
	ended := s.outage.CompareAndSwap(outageRead, outageNone)
	if write {
		ended = s.outage.CompareAndSwap(outageWrite, outageNone) || ended
	}
	if ended {
		s.log.Info("tokencache: shared store available again")
	}
}

// Reason says why a Source fetches a new token. A Fetcher reads it with
// FetchReason, e.g. to use a costly forced refresh only when the upstream
// rejected the current token.
type Reason int

const (
	// ReasonMissing: there was no shared token (first use, expiry, lost data).
	ReasonMissing Reason = iota + 1
	// ReasonExpiring: the shared token entered its refresh-ahead window.
	ReasonExpiring
	// ReasonInvalidated: the shared token was reported invalid through
	// Invalidate.
	ReasonInvalidated
)

func (r Reason) String() string {
	switch r {
	case ReasonMissing:
		return "missing"
	case ReasonExpiring:
		return "expiring"
	case ReasonInvalidated:
		return "invalidated"
	}
	return "unknown"
}

type reasonKey struct{}

// FetchReason returns why the Source that called Fetch with ctx wants a new
// token, or 0 if ctx does not come from a Source.
func FetchReason(ctx context.Context) Reason {
	r, _ := ctx.Value(reasonKey{}).(Reason)
	return r
}

// refreshLocked fetches and saves a token while holding the lock. lost
// reports a failure because the lock was lost. It returns neither an entry
// nor an error when the store holds its newest token, fresh, but this Source
// could not adopt it: the caller reads again rather than fetching over it.
func (s *Source) refreshLocked(ctx context.Context, held Held) (_ *entry, lost bool, err error) {
	lctx := held.Context()
	defer func() {
		lost = err != nil && lctx.Err() != nil && s.ctx.Err() == nil
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = held.Release(rctx)
	}()
	// Another instance may have refreshed between our read and our lock.
	r, err := s.load(lctx)
	if err != nil {
		return nil, false, err
	}
	if s.fresh(r.sh) && (r.have || s.newest(r)) {
		return s.adopt(r.sh, 0), false, nil
	}
	reason := ReasonMissing
	switch {
	case r.invalidated || (r.sh.Version > 0 && r.sh.Version <= s.dead.Load()):
		reason = ReasonInvalidated
	case r.have:
		reason = ReasonExpiring
	}
	b, err := s.store.LoadBackoff(lctx)
	if err != nil {
		return nil, false, s.storeErr("read backoff", false, err)
	}
	if b.Remaining > 0 && (b.Identity == "" || s.fetcherFP == "" || b.Identity == s.fetcherFP) {
		return nil, false, s.backingOff(b, nil)
	}
	if b.Remaining > 0 {
		// Recorded by a Fetcher with another account or secret (a wrong
		// secret that was since fixed): not ours to wait for.
		s.log.Info("tokencache: ignoring a backoff recorded by a fetcher with another identity", slog.String("class", b.Class))
		b = Backoff{}
	}
	if wait := s.fetches.wait(time.Now(), max(r.sh.Lifetime, time.Duration(s.lifetime.Load()))); wait > 0 {
		s.log.Warn("tokencache: too many fetches within one token lifetime; backing off",
			slog.Int("fetches", MaxFetchesPerLifetime), slog.Duration("backoff", wait))
		b.Failures++
		return nil, false, fmt.Errorf("%w: %w", ErrTooManyFetches, s.failed(ctx, b, wait, ErrTooManyFetches))
	}
	version, err := s.store.NextVersion(lctx)
	if err != nil {
		return nil, false, s.storeErr("next version", true, err)
	}
	if p := s.takePending(); p != nil && reason != ReasonInvalidated {
		// A token fetched while the store was down: offer it instead of
		// fetching again.
		if ttl := time.Until(p.deadline); ttl > s.opts.window(p.tok.Lifetime) {
			sh := Shared{Value: p.tok.Value, Version: version, TTL: ttl, Lifetime: p.tok.Lifetime, Identity: s.accountFP}
			e, err := s.share(ctx, sh)
			if err == nil {
				s.log.Info("tokencache: shared the token fetched while the store was unavailable")
			}
			return e, false, err
		}
	}
	return s.fetchAndShare(ctx, lctx, version, reason, b)
}

// fetchAndShare fetches under the lock (lctx) and saves the token as version.
func (s *Source) fetchAndShare(ctx, lctx context.Context, version int64, reason Reason, b Backoff) (*entry, bool, error) {
	s.log.Debug("tokencache: fetching a new token", slog.Int64("version", version), slog.String("reason", reason.String()))
	fctx, cancel := context.WithTimeout(context.WithValue(lctx, reasonKey{}, reason), s.opts.FetchTimeout)
	tok, err := s.fetch(fctx)
	cancel()
	if err == nil {
		// Only tokens issued count: failures are paced by the backoff.
		s.fetches.add(time.Now())
	}
	if err == nil {
		err = s.check(tok)
	}
	if err != nil {
		err = fmt.Errorf("token: %s: fetch: %w", s.name, err)
		if lctx.Err() == nil || context.Cause(fctx) == context.DeadlineExceeded {
			// The upstream failed (not our lock or our Close): make
			// every instance wait.
			b.Failures++
			s.failed(ctx, b, s.opts.Backoff(err, b.Failures), err)
		}
		return nil, false, err
	}
	ttl := tok.ExpiresAt.Sub(s.opts.Now())
	sh := Shared{Value: tok.Value, Version: version, TTL: ttl, Lifetime: ttl, Identity: s.accountFP}
	// The upstream has just invalidated the previous token: serve the new
	// one here at once, then share it. Save even if the lock was lost
	// meanwhile: the fence decides.
	e := s.adopt(sh, 0)
	shared, err := s.share(ctx, sh)
	switch {
	case shared != nil:
		return shared, false, nil
	case err != nil && !errors.Is(err, ErrFenced):
		// The token is good but other instances cannot see it; they will
		// refresh on their own.
		s.log.Warn("tokencache: could not share the new token", errAttr(err))
	}
	return e, false, nil
}

// share saves sh with a fenced write and returns its entry. If the store
// already holds a newer token, it returns that one's entry, or nil with an
// error wrapping ErrFenced.
func (s *Source) share(ctx context.Context, sh Shared) (*entry, error) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.FetchTimeout)
	defer cancel()
	err := s.store.Save(sctx, sh)
	switch {
	case err == nil:
		s.storeUp(true)
		if e := s.adopt(sh, 0); e != nil {
			return e, nil
		}
		// An event announced a newer version before the save: the
		// store's word decides.
	case errors.Is(err, ErrFenced):
		// A newer token was saved meanwhile: take it.
	default:
		return nil, s.storeErr("save", true, err)
	}
	if r, lerr := s.load(sctx); lerr == nil && r.have {
		if e := s.adopt(r.sh, 0); e != nil {
			return e, nil
		}
	}
	if err == nil {
		return nil, nil
	}
	return nil, fmt.Errorf("token: %s: save: %w", s.name, err)
}

// fetchLog remembers when the last MaxFetchesPerLifetime fetches started.
type fetchLog struct {
	mu   sync.Mutex // guards at and next
	at   [MaxFetchesPerLifetime]time.Time
	next int // index of the oldest
}

// reset forgets every fetch.
func (l *fetchLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at, l.next = [MaxFetchesPerLifetime]time.Time{}, 0
}

func (l *fetchLog) add(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at[l.next] = t
	l.next = (l.next + 1) % len(l.at)
}

// maxFetchWindow caps the window MaxFetchesPerLifetime counts in, so that
// long-lived tokens never make a Source wait longer.
const maxFetchWindow = 10 * time.Minute

// wait returns how long to wait before another fetch so that no more than
// MaxFetchesPerLifetime tokens are fetched within one lifetime (at most
// maxFetchWindow): 0 if one may be fetched now.
func (l *fetchLog) wait(now time.Time, lifetime time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	window := min(lifetime, maxFetchWindow)
	oldest := l.at[l.next]
	if oldest.IsZero() || now.Sub(oldest) >= window {
		return 0
	}
	return oldest.Add(window).Sub(now)
}

// check validates a fetched token.
func (s *Source) check(tok Token) error {
	switch {
	case tok.Value == "" || !tok.ExpiresAt.After(s.opts.Now()):
		return fmt.Errorf("fetcher returned %v: %w", tok, ErrInvalidToken)
	case len(tok.Value) > MaxTokenLen:
		return fmt.Errorf("%w: %d bytes", ErrTokenTooLarge, len(tok.Value))
	}
	return nil
}

// failed records a failed refresh in the shared backoff, so that every
// instance waits for d, and returns the error callers get meanwhile.
func (s *Source) failed(ctx context.Context, b Backoff, d time.Duration, err error) error {
	b.Remaining, b.Identity = d, s.fetcherFP
	b.Class, b.Code = Classify(err)
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if serr := s.store.SaveBackoff(bctx, b); serr != nil {
		s.log.Warn("tokencache: could not share the upstream backoff", errAttr(serr))
	}
	return s.backingOff(b, err)
}

// fetch calls the Fetcher but returns when ctx is done even if the Fetcher
// does not honour it. Such a Fetcher's goroutine ends only when it returns,
// possibly after Close.
func (s *Source) fetch(ctx context.Context) (Token, error) {
	type result struct {
		tok Token
		err error
	}
	ch := make(chan result, 1)
	go func() {
		returned := false
		defer func() {
			if returned {
				return
			}
			// A panic, or runtime.Goexit (recover returns nil). The stack
			// says where; the panic value may hold anything, so only its
			// type is logged.
			p := recover()
			s.log.Error("tokencache: fetcher panicked", slog.String("panic_type", fmt.Sprintf("%T", p)),
				slog.String("stack", string(debug.Stack())))
			ch <- result{err: fmt.Errorf("%w (%T)", ErrFetcherPanic, p)}
		}()
		tok, err := s.fetcher.Fetch(ctx)
		returned = true
		ch <- result{tok, redactErr(err)}
	}()
	select {
	case r := <-ch:
		return r.tok, r.err
	case <-ctx.Done():
		select {
		case r := <-ch: // an answer that came with the deadline still counts
			return r.tok, r.err
		default:
			return Token{}, context.Cause(ctx)
		}
	}
}

func (s *Source) fresh(sh Shared) bool {
	return sh.TTL > s.opts.window(sh.Lifetime)
}

// adopt makes sh the near-cached token and returns its entry, or nil if sh
// was invalidated or replaced meanwhile. The entry turns stale at the start of its
// refresh-ahead window, or after recheck if that is set.
func (s *Source) adopt(sh Shared, recheck time.Duration) *entry {
	if sh.Version <= s.dead.Load() || sh.Version < s.seen.Load() {
		return nil
	}
	e := s.install(sh, recheck)
	if sh.Version <= s.dead.Load() || sh.Version < s.seen.Load() {
		// Invalidated, or announced as replaced, while we installed it:
		// onEvent may have missed this entry, so mark it.
		e.state.Store(stateSuperseded)
		return nil
	}
	s.mu.Lock()
	s.pending = nil // the store's token wins over one fetched without it
	s.endBackoffLocked()
	s.mu.Unlock()
	return e
}

// install makes sh the near-cached token. While notifications are not
// delivered, it is read again after a poll interval if a caller asks.
func (s *Source) install(sh Shared, recheck time.Duration) *entry {
	if s.deaf.Load() && recheck == 0 {
		recheck = s.opts.PollInterval
	}
	s.lifetime.Store(int64(sh.Lifetime))
	e := &entry{
		tok:      Token{Value: sh.Value, ExpiresAt: s.opts.Now().Add(sh.TTL)},
		version:  sh.Version,
		deadline: time.Now().Add(sh.TTL),
	}
	if s.ctx.Err() != nil {
		// Closed: a refresh that outlived Close must not near-cache
		// anything, or the hot path would serve it.
		e.state.Store(stateSuperseded)
		return e
	}
	staleIn := sh.TTL - s.opts.window(sh.Lifetime)
	if recheck > 0 {
		staleIn = min(recheck, sh.TTL/2)
	}
	if staleIn <= 0 {
		e.state.Store(stateAhead)
	} else {
		e.timer = time.AfterFunc(staleIn, func() { e.state.CompareAndSwap(stateFresh, stateAhead) })
	}
	if old := s.cur.Swap(e); old != nil && old.timer != nil {
		old.timer.Stop()
	}
	if s.deaf.Load() && recheck == 0 {
		// Unsubscribed arrived after the check above: onEvent may have
		// flipped the previous entry instead of this one.
		e.state.CompareAndSwap(stateFresh, stateAhead)
	}
	return e
}

// onEvent reacts to a change announced by the store.
func (s *Source) onEvent(ev Event) {
	e := s.cur.Load()
	switch ev.Kind {
	case Refreshed:
		raise(&s.seen, ev.Version)
		if e != nil && e.version >= ev.Version {
			return
		}
	case Invalidated:
		raise(&s.dead, ev.Version)
		if e != nil && e.version > ev.Version {
			return
		}
	case Unsubscribed:
		// Re-read the current token when a caller next asks, and every
		// token installed from now on after a poll interval.
		s.deaf.Store(true)
		if e != nil {
			e.state.CompareAndSwap(stateFresh, stateAhead)
		}
		return
	case Resync:
		s.deaf.Store(false)
	default:
		return
	}
	if e != nil && ev.Kind != Resync {
		e.state.Store(stateSuperseded)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.Kind == Refreshed {
		// A token was saved: whatever backoff or store failure this
		// instance knew of is over.
		s.endBackoffLocked()
		s.failErr = nil
	}
	close(s.wake)
	s.wake = make(chan struct{})
	switch {
	case s.closed:
	case s.flight != nil:
		// The running refresh may have read before this event.
		s.again = true
	case e == nil, ev.Kind == Resync && !e.valid():
		// Nobody holds this token; waiters were woken.
	default:
		s.startLocked()
	}
}

// raise sets a to v if v is greater.
func raise(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// Invalidate reports that the upstream rejected bad. If the near-cached token
// is bad, it is dropped, the shared token is removed if it is still bad, and
// a refresh starts; Token then waits for the new token. Invalidating a token
// that was already replaced does nothing, so a thousand callers reporting the
// same bad token cause one fetch.
func (s *Source) Invalidate(ctx context.Context, bad string) error {
	s.mu.Lock()
	if s.pending != nil && s.pending.tok.Value == bad {
		s.pending = nil // never offer the store a token known to be bad
	}
	s.mu.Unlock()
	e := s.cur.Load()
	if e == nil || e.tok.Value != bad {
		return nil
	}
	e.bad.Store(true)
	raise(&s.killed, e.version)
	s.onEvent(Event{Kind: Invalidated, Version: e.version})
	if _, err := s.store.Invalidate(ctx, e.version); err != nil {
		return fmt.Errorf("token: %s: invalidate: %w", s.name, err)
	}
	return nil
}

// closeWait bounds how long Close waits for background work blocked in
// store I/O.
const closeWait = time.Second

// Close stops the Source's background work and its subscription. Token
// returns ErrClosed afterwards, and so do calls waiting when Close runs.
// Close is idempotent and always returns nil. It returns once the background
// work has stopped, or after about a second if that work is blocked in I/O
// that ignores cancellation (a go-redis client without
// ContextTimeoutEnabled waits for its socket timeouts); such work ends on
// its own and changes nothing the caller sees. A Fetcher that ignores its
// context may still be running.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		done := make(chan struct{})
		go func() {
			s.stopWatch()
			s.wg.Wait()
			close(done)
		}()
		t := time.NewTimer(closeWait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			s.log.Warn("tokencache: closed while a store call was still blocked; it ends when the store answers or times out")
		}
		if e := s.cur.Swap(nil); e != nil && e.timer != nil {
			e.timer.Stop()
		}
	})
	return nil
}
