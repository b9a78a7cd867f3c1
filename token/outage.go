package token

// Store outages: logged once when they start and once when they end.

import (
	"fmt"
	"log/slog"
)

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
	if h := s.opts.Hooks.StoreError; h != nil {
		h(StoreErrorInfo{Credential: s.name, Op: op})
	}
	level := outageRead
	if write {
		level = outageWrite
	}
	for s.life.ctx.Err() == nil {
		old := s.warn.outage.Load()
		if old >= level || !s.warn.outage.CompareAndSwap(old, level) {
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
	ended := s.warn.outage.CompareAndSwap(outageRead, outageNone)
	if write {
		ended = s.warn.outage.CompareAndSwap(outageWrite, outageNone) || ended
	}
	if ended {
		s.log.Info("tokencache: shared store available again")
	}
}
