package token_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// stuckBackoffStore is a tokentest.Store whose LoadBackoff, once armed,
// waits for release whatever its context says (a go-redis client without
// ContextTimeoutEnabled), then reports a shared backoff.
type stuckBackoffStore struct {
	*tokentest.Store
	release chan struct{}
}

func (s stuckBackoffStore) LoadBackoff(ctx context.Context) (token.SharedBackoff, error) {
	<-s.release
	return token.SharedBackoff{Failures: 3, Remaining: time.Minute, Class: token.ClassRefreshRevoked}, nil
}

// TestReviewBackoffHookAfterClose: Close reports the end of any backoff
// (Backoff Active false), but a refresh Close could not wait for (blocked
// in store I/O that ignores cancellation, which Close documents) may learn
// of a shared backoff afterwards and report Active true: no false ever
// follows, and a gauge of active backoffs (extra/otel) stays up for a
// Source that is gone.
func TestReviewBackoffHookAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := stuckBackoffStore{Store: tokentest.NewStore(), release: make(chan struct{})}
		var r recorder
		s, err := token.NewSource("c", tokentest.New(time.Hour), st, st, token.Options{Logger: quiet, Hooks: r.hooks()})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = s.Token(context.Background()) }()
		synctest.Wait() // the refresh is in LoadBackoff
		_ = s.Close()   // gives up on it after about a second
		close(st.release)
		synctest.Wait()
		active := 0
		r.mu.Lock()
		for _, c := range r.calls {
			switch c {
			case `Backoff token.BackoffInfo{Credential:"c", Active:true, Class:"refresh_revoked", Code:""}`:
				active++
			case `Backoff token.BackoffInfo{Credential:"c", Active:false, Class:"refresh_revoked", Code:""}`:
				active--
			}
			t.Log(c)
		}
		r.mu.Unlock()
		if active != 0 {
			t.Errorf("Backoff hook: %d more Active true than false after Close", active)
		}
	})
}
