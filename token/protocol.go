package token

// The shared-store protocol: read, lock, re-read, fetch, fenced save.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"
)

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
	b, err := s.sharedBackoff(lctx)
	if err != nil {
		return nil, false, err
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

// sharedBackoff reads the shared backoff record. It returns the error
// callers get while the backoff binds this Source, and otherwise the record
// to count further failures on (empty if it does not bind this Source).
func (s *Source) sharedBackoff(ctx context.Context) (SharedBackoff, error) {
	resets := s.resets.Load()
	b, err := s.store.LoadBackoff(ctx)
	switch {
	case err != nil:
		return SharedBackoff{}, s.storeErr("read backoff", false, err)
	case b.Remaining <= 0:
		return b, nil
	case s.resets.Load() != resets:
		// ResetBackoff ran while we read the record it removed.
		return SharedBackoff{}, nil
	case b.Identity == "" || s.fetcherFP == "" || b.Identity == s.fetcherFP:
		return SharedBackoff{}, s.backingOff(b, nil)
	}
	// Recorded by a Fetcher with another account or secret (a wrong secret
	// that was since fixed): not ours to wait for.
	s.log.Info("tokencache: ignoring a backoff recorded by a fetcher with another identity", slog.String("class", b.Class))
	return SharedBackoff{}, nil
}

// fetchAndShare fetches under the lock (lctx) and saves the token as version.
func (s *Source) fetchAndShare(ctx, lctx context.Context, version int64, reason Reason, b SharedBackoff) (*entry, bool, error) {
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
			s.failed(ctx, b, s.opts.BackoffPolicy(err, b.Failures), err)
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
func (s *Source) failed(ctx context.Context, b SharedBackoff, d time.Duration, err error) error {
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
