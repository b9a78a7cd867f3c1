package token

// The shared-store protocol: read, lock, re-read, fetch, fenced save.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// refresh returns the in-process refresh, starting one if none runs. It
// returns nil after Close.
func (s *Source) refresh() *call[*entry] { return s.flight.do(s.refreshOnce) }

// refreshOnce is one refresh, bounded by WaitTimeout; the gate learns how
// it ended.
func (s *Source) refreshOnce() (*entry, error) {
	ctx, cancel := context.WithTimeoutCause(s.life.ctx, s.opts.WaitTimeout, ErrRefreshTimeout)
	e, err := s.run(ctx)
	cancel()
	// A store failure or an identity mismatch is what callers get until
	// RetryInterval ends; each has logged once already.
	sticky := errors.Is(err, ErrStoreUnavailable) || errors.Is(err, ErrIdentityMismatch)
	if err != nil && s.life.ctx.Err() == nil && !sticky {
		s.log.Warn("tokencache: refresh failed", errAttr(err))
	}
	s.gate.finished(err, sticky)
	s.reportBackoff()
	return e, err
}

// run is one refresh: read the store; if the token is not fresh, become the
// refresher or wait for the one that is.
func (s *Source) run(ctx context.Context) (*entry, error) {
	timer := time.NewTimer(s.opts.PollInterval)
	defer timer.Stop()
	for {
		wake := s.wake.wait()

		r, err := s.load(ctx)
		if err != nil {
			if e := s.near.cur.Load(); errors.Is(err, ErrStoreUnavailable) && s.opts.FetchWhenStoreDown && (!e.valid() || !e.alive(s.near.dead.Load())) {
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
		o := s.attempt(ctx, r)
		switch o.next {
		case stepDone:
			return o.e, o.err
		case stepAgain:
			continue
		}
		timer.Reset(o.wait)
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
	stepWait              // wait for an event or outcome.wait, then read again
)

// outcome is what one attempt decided; run switches on next.
type outcome struct {
	next step
	e    *entry
	err  error
	// wait bounds a stepWait: PollInterval, or the lock's remaining time to
	// live if that is shorter, so that waiters wake as the lock of a
	// refresher that died expires.
	wait time.Duration
}

func done(e *entry, err error) outcome { return outcome{next: stepDone, e: e, err: err} }

// attempt tries the lock after read r found no fresh token: it refreshes
// under the lock, or serves r's token while another instance refreshes.
func (s *Source) attempt(ctx context.Context, r read) outcome {
	// The lock, and the fetch and save under it, are not bounded by the
	// wait budget: a token the upstream has issued must not be dropped
	// because waiting took long. FetchTimeout bounds them.
	held, err := s.locker.TryLock(s.life.ctx)
	switch {
	case err == nil:
		s.storeUp(true)
		return s.underLock(ctx, held)
	case !errors.Is(err, ErrLocked):
		if s.life.ctx.Err() != nil {
			return done(nil, ErrClosed)
		}
		return done(nil, s.storeErr("lock", true, err))
	}
	s.storeUp(true) // a refused lock is a write the store answered
	if !r.have {
		wait := s.opts.PollInterval
		if le := (*LockedError)(nil); errors.As(err, &le) && le.Remaining > 0 {
			wait = min(wait, le.Remaining)
		}
		return outcome{next: stepWait, wait: wait}
	}
	// Another instance is refreshing and this token is still valid: serve
	// it, and look again after a poll interval if no notification comes
	// first.
	if e := s.adopt(r.sh, s.opts.PollInterval); e != nil {
		return done(e, nil)
	}
	return outcome{next: stepAgain} // invalidated meanwhile
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
		r.sh.Version > f.Invalidated && r.sh.Version > s.near.killed.Load()
}

// load reads the store. A missing, unreadable or invalidated token is a miss.
func (s *Source) load(ctx context.Context) (read, error) {
	// What was announced before the read was sent must be in the store's
	// fence: the store publishes an event only after the write.
	seen, dead := s.near.seen.Load(), s.near.dead.Load()
	sent := time.Now()
	sh, err := s.store.Load(ctx)
	switch {
	case err == nil:
		// The TTL was read when the request arrived; count it from when
		// it was sent, so that the copy never outlives the original.
		sh.TTL -= time.Since(sent)
		s.storeUp(false)
		s.confirm(seen, dead, sh.Fence)
		if err := s.checkIdentity(sh.Fence); err != nil {
			return read{}, err
		}
		dead := sh.Version <= s.near.dead.Load()
		// A version older than one already announced was read just before
		// the announced write: it is dead upstream, read again.
		have := sh.TTL > 0 && !dead && sh.Version >= s.near.seen.Load()
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

// underLock refreshes while holding the lock, then releases it.
func (s *Source) underLock(ctx context.Context, held Held) outcome {
	defer func() {
		rctx, cancel := detached(ctx, time.Second)
		defer cancel()
		_ = held.Release(rctx)
	}()
	e, err := s.refreshLocked(ctx, held.Context())
	lost := held.Context().Err() != nil && s.life.ctx.Err() == nil
	if h := s.opts.Hooks.LockLost; h != nil && lost {
		h(LockLostInfo{Credential: s.name})
	}
	switch {
	case err != nil && lost:
		// We lost the lock mid-refresh, so another instance may have
		// taken over: read again and wait for it.
		s.log.Warn("tokencache: refresh lock lost; waiting for another instance", errAttr(err))
		return outcome{next: stepAgain}
	case e != nil || err != nil:
		return done(e, err)
	}
	// The store holds its newest token, which this Source could not adopt
	// because an event arrived meanwhile: wait for the next event or poll,
	// never fetch over it.
	return outcome{next: stepWait, wait: s.opts.PollInterval}
}

// refreshLocked fetches and saves a token while holding the lock, which
// lctx is bound to. It returns neither an entry nor an error when the store
// holds its newest token, fresh, but this Source could not adopt it: the
// caller reads again rather than fetching over it.
func (s *Source) refreshLocked(ctx, lctx context.Context) (*entry, error) {
	// Another instance may have refreshed between our read and our lock.
	r, err := s.load(lctx)
	if err != nil {
		return nil, err
	}
	if s.fresh(r.sh) && (r.have || s.newest(r)) {
		return s.adopt(r.sh, 0), nil
	}
	reason := s.reason(r)
	b, err := s.sharedBackoff(lctx)
	if err != nil {
		return nil, err
	}
	if wait := s.gate.fetches.wait(time.Now(), max(r.sh.Lifetime, time.Duration(s.near.lifetime.Load()))); wait > 0 {
		s.log.Warn("tokencache: too many fetches within one token lifetime; backing off",
			slog.Int("fetches", MaxFetchesPerLifetime), slog.Duration("backoff", wait))
		b.Failures++
		return nil, fmt.Errorf("%w: %w", ErrTooManyFetches, s.failed(ctx, b, wait, ErrTooManyFetches))
	}
	version, err := s.store.NextVersion(lctx)
	if err != nil {
		return nil, s.storeErr("next version", true, err)
	}
	if p, deadline, ok := s.pending.take(); ok && reason != ReasonInvalidated {
		// A token fetched while the store was down: offer it instead of
		// fetching again.
		if ttl := time.Until(deadline); ttl > s.opts.window(p.Lifetime) {
			p.Version, p.TTL = version, ttl
			e, err := s.share(ctx, p, time.Now(), s.store.Save)
			if err == nil {
				s.log.Info("tokencache: shared the token fetched while the store was unavailable")
			}
			return e, err
		}
	}
	return s.fetchAndShare(ctx, lctx, version, reason, b)
}

// reason is why a refresh that read r fetches.
func (s *Source) reason(r read) Reason {
	switch {
	case r.invalidated || (r.sh.Version > 0 && r.sh.Version <= s.near.dead.Load()):
		return ReasonInvalidated
	case r.have:
		return ReasonExpiring
	}
	return ReasonMissing
}

// sharedBackoff reads the shared backoff record. It returns the error
// callers get while the backoff binds this Source, and otherwise the record
// to count further failures on (empty if it does not bind this Source).
func (s *Source) sharedBackoff(ctx context.Context) (SharedBackoff, error) {
	resets := s.gate.resets.Load()
	b, err := s.store.LoadBackoff(ctx)
	switch {
	case err != nil:
		return SharedBackoff{}, s.storeErr("read backoff", false, err)
	case b.Remaining <= 0:
		return b, nil
	case s.gate.resets.Load() != resets:
		// ResetBackoff ran while we read the record it removed.
		return SharedBackoff{}, nil
	case s.binds(b):
		return SharedBackoff{}, s.gate.backingOff(b, nil)
	}
	// Recorded by a Fetcher with another account or secret (a wrong secret
	// that was since fixed): not ours to wait for.
	s.log.Info("tokencache: ignoring a backoff recorded by a fetcher with another identity", slog.String("class", b.Class))
	return SharedBackoff{}, nil
}

// fetchAndShare fetches under the lock (lctx) and saves the token as version.
func (s *Source) fetchAndShare(ctx, lctx context.Context, version int64, reason Reason, b SharedBackoff) (*entry, error) {
	s.log.Debug("tokencache: fetching a new token", slog.Int64("version", version), slog.String("reason", reason.String()))
	base := lctx
	if s.rot != nil {
		// A redemption, once sent, ends within FetchTimeout even if the
		// lock is lost: cancelling it could only lose the new refresh
		// state (see rotation.redeem).
		base = context.WithoutCancel(lctx)
	}
	fctx, cancel := context.WithTimeout(context.WithValue(base, reasonKey{}, reason), s.opts.FetchTimeout)
	if h := s.opts.Hooks.FetchStart; h != nil {
		h(FetchStartInfo{Credential: s.name, Reason: reason})
	}
	start := time.Now()
	f, err := s.fetch(fctx, lctx)
	took := time.Since(start)
	cancel()
	var sh Shared
	var born time.Time
	if err == nil {
		// Only tokens issued count: failures are paced by the backoff.
		s.gate.fetches.add(time.Now())
		born = time.Now() // accept counts the TTL from about now
		sh, err = s.accept(f.tok, version)
	}
	if err != nil && f.rot != nil {
		// The upstream replaced the state even if its token is of no
		// use: keep the new state.
		s.commitRotation(ctx, f.rot)
	}
	if err != nil {
		err = fmt.Errorf("token: %s: fetch: %w", s.name, err)
		if lctx.Err() == nil || context.Cause(fctx) == context.DeadlineExceeded {
			// The upstream failed (not our lock or our Close): make
			// every instance wait.
			b.Failures++
			s.failed(ctx, b, s.opts.BackoffPolicy(err, b.Failures), err)
		}
		s.opts.Hooks.fetchDone(s.name, reason, took, false, err)
		return nil, err
	}
	// The upstream has just invalidated the previous token: serve the new
	// one here at once, then share it. Save even if the lock was lost
	// meanwhile: the fence decides.
	e := s.adopt(sh, 0)
	shared, err := s.shareFetched(ctx, sh, born, f.rot)
	fenced := (shared == nil && errors.Is(err, ErrFenced)) || (shared != nil && shared.version != sh.Version)
	s.opts.Hooks.fetchDone(s.name, reason, took, fenced, nil)
	switch {
	case shared != nil:
		return shared, nil
	case err != nil && !errors.Is(err, ErrFenced):
		// The token is good but other instances cannot see it; they will
		// refresh on their own.
		s.log.Warn("tokencache: could not share the new token", errAttr(err))
	}
	return e, nil
}

// shareFetched shares sh, and first commits rot, the refresh state that
// replaced the one sh was redeemed with: in one step if the Store keeps
// both, else durably before the token is shared, so that a crash between
// the two writes costs only an access token, which is fetched again.
func (s *Source) shareFetched(ctx context.Context, sh Shared, born time.Time, rot *rotated) (*entry, error) {
	if rot == nil {
		return s.share(ctx, sh, born, s.store.Save)
	}
	if sv := s.rot.saver; sv != nil {
		e, err := s.share(ctx, sh, born, func(ctx context.Context, sh Shared) error {
			err := s.rot.commit(ctx, rot, func(ctx context.Context) error { return sv.SaveRotated(ctx, sh, rot.gen, rot.next) })
			if err != nil && !errors.Is(err, ErrFenced) {
				s.lostRotation(rot, err)
			}
			return err
		})
		if errors.Is(err, errExpiredUnsaved) {
			// Nothing was written, the state included: commit it alone.
			s.commitRotation(ctx, rot)
		}
		return e, err
	}
	s.commitRotation(ctx, rot)
	return s.share(ctx, sh, born, s.store.Save)
}

// commitRotation commits rot alone, durably, and logs it if it was lost.
func (s *Source) commitRotation(ctx context.Context, rot *rotated) {
	cctx, cancel := detached(ctx, s.opts.FetchTimeout)
	defer cancel()
	err := s.rot.commit(cctx, rot, func(ctx context.Context) error { return s.rot.rs.CommitRefresh(ctx, rot.gen, rot.next) })
	if err != nil && !errors.Is(err, errFencedAfterCommit) {
		s.lostRotation(rot, err)
	}
}

// lostRotation logs a new refresh state that could not be committed.
func (s *Source) lostRotation(rot *rotated, err error) {
	if errors.Is(err, ErrFenced) {
		// Another instance redeemed the same state (this one lost its
		// lock mid-redemption), or a new authorization was seeded: the
		// stored state is theirs.
		s.log.Warn("tokencache: the refresh state was replaced meanwhile; this redemption's is dropped",
			slog.Int64("generation", rot.gen), errAttr(err))
		return
	}
	// The new state is lost with this process: the next refresh redeems
	// the old one, which the upstream may refuse (ErrRefreshRevoked).
	s.log.Error("tokencache: could not commit the new refresh state; the stored one was kept",
		slog.Int64("generation", rot.gen), errAttr(err))
}

// errExpiredUnsaved: the token expired before its save was sent, so
// nothing was written.
var errExpiredUnsaved = fmt.Errorf("the token expired before it could be saved: %w", ErrInvalidToken)

// share saves sh, whose TTL was counted at born, with save (a fenced
// write) and returns its entry. If the
// store already holds a newer token, it returns that one's entry, or nil
// with an error wrapping ErrFenced.
func (s *Source) share(ctx context.Context, sh Shared, born time.Time, save func(context.Context, Shared) error) (*entry, error) {
	sctx, cancel := detached(ctx, s.opts.FetchTimeout)
	defer cancel()
	// sh.TTL was counted at born: the store counts it from the save.
	saved := sh
	if saved.TTL -= time.Since(born); saved.TTL <= 0 {
		return nil, fmt.Errorf("token: %s: %w", s.name, errExpiredUnsaved)
	}
	err := save(sctx, saved)
	switch {
	case err == nil:
		s.storeUp(true)
		if e := s.adopt(saved, 0); e != nil {
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

// detached returns a context that outlives ctx's cancellation, bounded by
// d, for a write that must finish once begun (a save, a release).
func detached(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// failed records a failed refresh in the shared backoff, so that every
// instance waits for d, and returns the error callers get meanwhile.
func (s *Source) failed(ctx context.Context, b SharedBackoff, d time.Duration, err error) error {
	b.Remaining, b.Identity = d, s.fetcherFP
	b.Class, b.Code = Classify(err)
	bctx, cancel := detached(ctx, time.Second)
	defer cancel()
	if serr := s.store.SaveBackoff(bctx, b); serr != nil {
		s.log.Warn("tokencache: could not share the upstream backoff", errAttr(serr))
	}
	return s.gate.backingOff(b, err)
}
