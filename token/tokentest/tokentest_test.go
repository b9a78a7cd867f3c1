package tokentest_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestUpstreamStrictAndGrace(t *testing.T) {
	for _, grace := range []time.Duration{0, time.Hour} {
		up := tokentest.New(time.Hour)
		up.Grace = grace
		ctx := context.Background()
		a, err := up.Fetch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := up.Fetch(ctx)
		if !up.Valid(b.Value) || up.Valid(a.Value) != (grace > 0) {
			t.Errorf("grace %v: old valid %v, new valid %v", grace, up.Valid(a.Value), up.Valid(b.Value))
		}
		if up.Calls() != 2 || up.Issued() != 2 || len(up.Tokens()) != 2 || up.Tokens()[1] != b.Value {
			t.Errorf("counters: %d calls, %d issued", up.Calls(), up.Issued())
		}
	}
}

func TestUpstreamFailuresAndHold(t *testing.T) {
	up := tokentest.New(time.Hour)
	boom := errors.New("boom")
	up.FailNext(boom, nil)
	ctx := context.Background()
	if _, err := up.Fetch(ctx); !errors.Is(err, boom) {
		t.Errorf("first: %v", err)
	}
	if _, err := up.Fetch(ctx); !errors.Is(err, tokentest.ErrUnavailable) {
		t.Errorf("second: %v", err)
	}
	entered, release := up.Hold()
	done := make(chan error)
	go func() {
		_, err := up.Fetch(ctx)
		done <- err
	}()
	<-entered
	if up.InFlight() != 1 {
		t.Errorf("in flight: %d", up.InFlight())
	}
	release()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func TestUpstreamOverHTTP(t *testing.T) {
	up := tokentest.New(time.Minute)
	srv := httptest.NewServer(up)
	defer srv.Close()
	ctx := context.Background()
	tok, err := tokentest.HTTPFetcher(srv.URL, nil).Fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(tok.ExpiresAt); d < 59*time.Second || d > time.Minute {
		t.Errorf("ExpiresAt in %v", d)
	}
	if ok, err := tokentest.HTTPValid(ctx, nil, srv.URL, tok.Value); !ok || err != nil {
		t.Errorf("valid = %v, %v", ok, err)
	}
	up.FailNext(nil)
	if _, err := tokentest.HTTPFetcher(srv.URL, nil).Fetch(ctx); err == nil {
		t.Error("a failed fetch over HTTP succeeded")
	}
}

func TestStoreFences(t *testing.T) {
	st := tokentest.NewStore()
	ctx := context.Background()
	v1, _ := st.NextVersion(ctx)
	v2, _ := st.NextVersion(ctx)
	if err := st.Save(ctx, token.Shared{Value: "b", Version: v2, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, token.Shared{Value: "a", Version: v1, TTL: time.Minute}); !errors.Is(err, token.ErrFenced) {
		t.Errorf("late save: %v", err)
	}
	if _, err := st.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.TryLock(ctx); !errors.Is(err, token.ErrLocked) {
		t.Errorf("second lock: %v", err)
	}
}
