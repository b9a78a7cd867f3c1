package token

// The in-process flight: one refresh per Source at a time, that any
// number of callers wait for.

import (
	"context"
	"errors"
	"time"
)

// call is one in-process refresh that any number of callers wait for.
type call struct {
	done chan struct{}
	e    *entry // set if err is nil
	err  error
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
