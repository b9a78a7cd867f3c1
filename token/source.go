package token

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"
)

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
	config                 // what NewSource was given; write-once
	near    nearCache      // the token served, and the versions announced for it
	gate    gate           // whether a refresh may start now
	flight  flight[*entry] // the in-process refresh that callers wait for
	wake    signal         // broadcast on every event: waiters read again
	pending pending        // a token fetched while the store was down
	warn    warnings       // rate limits of log lines
	life    lifecycle
}

// config is what a Source was made with. Every field is written once, in
// NewSource.
type config struct {
	name    string
	fetcher Fetcher
	rot     *rotation // nil unless the Fetcher is a Redeemer
	store   Store
	locker  Locker
	opts    Options
	log     *slog.Logger
	// accountFP and fetcherFP fingerprint the Fetcher's Identity (see
	// fingerprints).
	accountFP, fetcherFP string
}

// lifecycle is what Close stops.
type lifecycle struct {
	ctx       context.Context // every refresh runs under it; done after Close
	cancel    context.CancelFunc
	stopWatch func() // ends the store subscription
	once      sync.Once
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
	rot, err := newRotation(f, store, &opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidConfig, name, err)
	}
	s := &Source{config: config{
		name:      name,
		fetcher:   f,
		rot:       rot,
		store:     store,
		locker:    locker,
		opts:      opts,
		log:       opts.Logger.With(slog.String("credential", name)),
		accountFP: account,
		fetcherFP: fetcher,
	}}
	s.gate.retry = opts.RetryInterval
	s.life.ctx, s.life.cancel = context.WithCancel(context.Background())
	s.life.stopWatch = store.Watch(s.onEvent)
	return s, nil
}

// Token returns a valid token. While the near-cached token is fresh it does
// no I/O, takes no lock and allocates nothing. Otherwise it may wait, within
// ctx, for a refresh by this or another instance.
func (s *Source) Token(ctx context.Context) (Token, error) {
	if e := s.near.cur.Load(); e != nil && e.state.Load() == stateFresh {
		return e.tok, nil
	}
	return s.slow(ctx)
}

// Cached returns the near-cached token if Token would return it at once:
// no I/O, no lock, no allocation, no context needed. ok is false when Token
// would have to do more (a refresh, a wait, or recording the first use of
// a phase); call Token then. Adapters to APIs without a context (an
// oauth2.TokenSource) use it to bound only the slow path with a timeout.
func (s *Source) Cached() (tok Token, ok bool) {
	if e := s.near.cur.Load(); e != nil && e.state.Load() == stateFresh {
		return e.tok, true
	}
	return Token{}, false
}

func (s *Source) slow(ctx context.Context) (Token, error) {
	e := s.near.cur.Load()
	if e != nil && e.state.Load() == stateIdle {
		// The first call of a phase: record the use (see stateIdle).
		s.markUsed(e)
		return e.tok, nil
	}
	valid := e.valid()
	if valid && e.state.Load() == stateAhead {
		s.markUsed(e)
		// Refresh in the background; nobody waits while a token is valid.
		if s.gate.mayRetry() {
			s.refresh()
		}
		return e.tok, nil
	}
	if valid && e.alive(s.near.dead.Load()) && !s.gate.mayRetry() {
		// Superseded, but the refresh that would replace it failed: keep
		// serving it rather than retrying on every call.
		return e.tok, nil
	}
	if s.opts.Hooks.WaitDone == nil {
		return s.wait(ctx, e, valid)
	}
	start := time.Now()
	tok, err := s.wait(ctx, e, valid)
	s.opts.Hooks.WaitDone(WaitDoneInfo{Credential: s.name, Duration: time.Since(start), Outcome: waitOutcome(err)})
	return tok, err
}

// wait returns a token once a refresh (this instance's or another's) ends;
// e is the near-cached entry, valid whether it is.
func (s *Source) wait(ctx context.Context, e *entry, valid bool) (Token, error) {
	if !valid || !e.alive(s.near.dead.Load()) {
		err := s.notYet()
		s.reportBackoff()
		if err != nil && !s.backoffEnded(ctx, err) {
			return Token{}, err
		}
	}
	for {
		c := s.refresh()
		if c == nil {
			return Token{}, ErrClosed
		}
		select {
		case <-c.done:
			if c.err == nil {
				if c.val != nil && c.val.valid() && c.val.alive(s.near.dead.Load()) {
					s.markUsed(c.val)
					return c.val.tok, nil
				}
				// Invalidated or expired while that refresh ran: wait
				// for the next.
				continue
			}
			if valid && e.valid() && e.alive(s.near.dead.Load()) {
				// Superseded by a newer token we could not read: the old
				// one is still the best we have.
				return e.tok, nil
			}
			if s.life.ctx.Err() != nil {
				return Token{}, ErrClosed
			}
			return Token{}, c.err
		case <-ctx.Done():
			return Token{}, ctxErr(fmt.Sprintf("token: %s: waiting for a token", s.name), ctx)
		}
	}
}

// isNil reports whether v is nil, or an interface holding a nil pointer,
// func, map, slice or channel (a typed nil, such as a nil
// *wechat.TokenFetcher or FetcherFunc(nil)).
// notYet returns the error a caller with no valid token gets without any
// I/O (see gate.notYet), and ErrClosed after Close.
func (s *Source) notYet() error {
	if s.life.ctx.Err() != nil {
		return ErrClosed
	}
	return s.gate.notYet()
}

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

// ctxErr wraps the error of a done ctx, and its cause if that differs, so
// that both errors.Is(err, context.DeadlineExceeded) and the cause match.
func ctxErr(msg string, ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
		return fmt.Errorf("%s: %w (%w)", msg, ctx.Err(), cause)
	}
	return fmt.Errorf("%s: %w", msg, ctx.Err())
}

// Invalidate reports that the upstream rejected bad. If the near-cached token
// is bad, it is dropped, the shared token is removed if it is still bad, and
// a refresh starts; Token then waits for the new token. Invalidating a token
// that was already replaced does nothing, so a thousand callers reporting the
// same bad token cause one fetch.
func (s *Source) Invalidate(ctx context.Context, bad string) error {
	s.pending.drop(bad) // never offer the store a token known to be bad
	e := s.near.cur.Load()
	if e == nil || e.tok.Value != bad {
		s.invalidated(false)
		return nil
	}
	e.bad.Store(true)
	raise(&s.near.killed, e.version)
	s.onEvent(Event{Kind: Invalidated, Version: e.version})
	removed, err := s.store.Invalidate(ctx, e.version)
	s.invalidated(removed)
	if err != nil {
		return fmt.Errorf("token: %s: invalidate: %w", s.name, err)
	}
	return nil
}

func (s *Source) invalidated(removed bool) {
	if h := s.opts.Hooks.Invalidated; h != nil {
		h(InvalidateInfo{Credential: s.name, Removed: removed})
	}
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
// context may still be running. With a Redeemer, Close waits up to
// FetchTimeout longer for a redemption in flight to be committed.
func (s *Source) Close() error {
	s.life.once.Do(func() {
		s.flight.close()
		s.life.cancel()
		done := make(chan struct{})
		go func() {
			s.life.stopWatch()
			s.flight.wait()
			close(done)
		}()
		wait := closeWait
		if s.rot != nil {
			// A redemption in flight must be committed: its state is
			// the only one the upstream still accepts.
			wait += s.opts.FetchTimeout
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			s.log.Warn("tokencache: closed while a store call was still blocked; it ends when the store answers or times out")
		}
		if e := s.near.cur.Swap(nil); e != nil && e.timer != nil {
			e.timer.Stop()
		}
		s.gate.open() // a backoff reported active ends with the Source
		s.reportBackoff()
	})
	return nil
}
