package token_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// secretError is a permanent fetcher error whose message holds secret.
type secretError = scenario.SecretError

const secret = scenario.Secret

// TestBackoffSharesClassNotMessage: a failed fetch's message stays in the
// process that saw it (its callers get it, its log shows it without the URL's
// query string); the shared record and other instances get only a class and
// a code.
func TestBackoffSharesClassNotMessage(t *testing.T) {
	ctx := context.Background()
	st := tokentest.NewStore()
	o, logs := logged()
	f := token.FetcherFunc(func(context.Context) (token.Token, error) { return token.Token{}, secretError{} })
	a, b := newSource(t, f, st, o), newSource(t, f, st, o)
	_, err := a.Token(ctx)
	if !errors.As(err, new(secretError)) {
		t.Fatalf("the failing instance's caller: %v, want the fetcher's error", err)
	}
	rec, _ := st.LoadBackoff(ctx)
	if rec.Class != token.ClassPermanent || rec.Code != "40125" || rec.Remaining < 9*time.Minute {
		t.Errorf("shared record = %+v, want class permanent, code 40125, 10 minutes", rec)
	}
	var be *token.BackoffError
	_, err = b.Token(ctx)
	if !errors.As(err, &be) || be.Class != token.ClassPermanent || be.Code != "40125" {
		t.Fatalf("another instance: %v, want a BackoffError with class and code", err)
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "invalid appsecret") {
		t.Errorf("another instance learned the message: %v", err)
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the secret was logged:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "?REDACTED") {
		t.Errorf("the failure was not logged with its URL redacted:\n%s", logs.String())
	}
}

// TestBackoffRemainingCountsDown: each BackoffError says the time actually
// left, and ResetBackoff ends the wait on every instance.
func TestBackoffRemainingCountsDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		st := tokentest.NewStore()
		var fail atomic.Bool
		fail.Store(true)
		up := tokentest.New(time.Hour)
		f := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
			if fail.Load() {
				return token.Token{}, secretError{}
			}
			return up.Fetch(ctx)
		})
		a, err := token.NewSource("test", f, st, st, opts())
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, _ := token.NewSource("test", f, st, st, opts())
		defer b.Close()
		_, _ = a.Token(ctx)
		var first, later *token.BackoffError
		if _, err := a.Token(ctx); !errors.As(err, &first) {
			t.Fatalf("%v, want a BackoffError", err)
		}
		time.Sleep(time.Minute)
		if _, err := a.Token(ctx); !errors.As(err, &later) || first.Remaining-later.Remaining != time.Minute {
			t.Fatalf("Remaining %v then %v a minute later", first.Remaining, later.Remaining)
		}
		if !strings.Contains(later.Error(), "ResetBackoff") {
			t.Errorf("the error does not say how to end it: %v", later)
		}
		fail.Store(false) // the secret was fixed
		if err := a.ResetBackoff(ctx); err != nil {
			t.Fatal(err)
		}
		if tok, err := b.Token(ctx); err != nil || !up.Valid(tok.Value) {
			t.Fatalf("after ResetBackoff, another instance: %v, %v", tok, err)
		}
	})
}

// TestFetcherPanic: a panicking Fetcher neither crashes the process nor
// keeps the lock; its callers get ErrFetcherPanic, the stack is logged, and
// every instance backs off as after a permanent error.
func TestFetcherPanic(t *testing.T) {
	ctx := context.Background()
	st := tokentest.NewStore()
	o, logs := logged()
	var calls atomic.Int32
	f := token.FetcherFunc(func(context.Context) (token.Token, error) {
		calls.Add(1)
		var m map[string]int
		m["boom"]++ // a nil map: panics
		return token.Token{}, nil
	})
	a, b := newSource(t, f, st, o), newSource(t, f, st, o)
	if _, err := a.Token(ctx); !errors.Is(err, token.ErrFetcherPanic) {
		t.Fatalf("err = %v, want ErrFetcherPanic", err)
	}
	if _, err := b.Token(ctx); !errors.Is(err, token.ErrFetcherPanic) || !errors.Is(err, token.ErrUpstreamBackoff) {
		t.Errorf("another instance: %v, want the shared backoff naming the panic", err)
	}
	if rec, _ := st.LoadBackoff(ctx); rec.Class != token.ClassPanic || rec.Remaining < 9*time.Minute {
		t.Errorf("shared record = %+v, want a 10-minute panic backoff", rec)
	}
	if h, err := st.TryLock(ctx); err != nil {
		t.Errorf("the lock was kept after the panic: %v", err)
	} else {
		_ = h.Release(ctx)
	}
	if !strings.Contains(logs.String(), "goroutine") || logs.Count("ERROR", "panicked") != 1 {
		t.Errorf("no stack in the log:\n%s", logs.String())
	}
	if calls.Load() != 1 {
		t.Errorf("fetcher called %d times, want 1", calls.Load())
	}
}

// TestNewSourceRefusesMisuse: what can never work is refused at construction
// with a typed error, not hours later in a background goroutine.
func TestNewSourceRefusesMisuse(t *testing.T) {
	st := tokentest.NewStore()
	up := tokentest.New(time.Hour)
	for _, tc := range []struct {
		name   string
		cred   string
		f      token.Fetcher
		store  token.Store
		locker token.Locker
	}{
		{"empty name", "", up, st, st},
		{"nil fetcher", "c", nil, st, st},
		{"nil store", "c", up, nil, st},
		{"nil locker", "c", up, st, nil},
	} {
		if s, err := token.NewSource(tc.cred, tc.f, tc.store, tc.locker, opts()); !errors.Is(err, token.ErrInvalidConfig) || s != nil {
			t.Errorf("%s: %v, want ErrInvalidConfig", tc.name, err)
		}
	}
}

// TestRedactURLs covers the log redaction of URLs.
func TestRedactURLs(t *testing.T) {
	for in, want := range map[string]string{
		`Get "https://h/p?secret=x&a=b": EOF`:        `Get "https://h/p?REDACTED": EOF`,
		`dial https://h/p#frag?secret=x`:             `dial https://h/p?REDACTED`,
		`no url here ?secret=x`:                      `no url here ?secret=x`,
		`http://a/?s=1 and grpc+tls://b:1/x?k=2 end`: `http://a/?REDACTED and grpc+tls://b:1/x?REDACTED end`,
	} {
		if got := token.RedactURLs(in); got != want {
			t.Errorf("RedactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTypedNilsAreRefused: a nil pointer or func inside the interface is as
// nil as nil (second review).
func TestTypedNilsAreRefused(t *testing.T) {
	st := tokentest.NewStore()
	var nilUpstream *tokentest.Upstream
	for name, f := range map[string]token.Fetcher{"nil pointer": nilUpstream, "nil func": token.FetcherFunc(nil)} {
		if _, err := token.NewSource("c", f, st, st, opts()); !errors.Is(err, token.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	panicky := token.WithIdentity(tokentest.New(time.Hour), token.Identity{})
	if _, err := token.NewSource("c", panickyIdentity{panicky}, st, st, opts()); !errors.Is(err, token.ErrInvalidConfig) {
		t.Errorf("an Identity that panics: %v, want ErrInvalidConfig", err)
	}
}

type panickyIdentity struct{ token.Fetcher }

func (panickyIdentity) Identity() token.Identity { panic("no identity") }

// TestGoexitInFetcher: a Fetcher that ends its goroutine with
// runtime.Goexit (t.FailNow in a test fake) is reported like a panic, at
// once, not after FetchTimeout.
func TestGoexitInFetcher(t *testing.T) {
	st := tokentest.NewStore()
	o := opts()
	o.FetchTimeout = time.Hour
	s := newSource(t, token.FetcherFunc(func(context.Context) (token.Token, error) {
		runtime.Goexit()
		return token.Token{}, nil
	}), st, o)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Token(ctx); !errors.Is(err, token.ErrFetcherPanic) {
		t.Errorf("err = %v, want ErrFetcherPanic", err)
	}
}

// TestCallersGetRedactedErrors: the failing instance's callers get the
// fetcher's error with URL query strings redacted (they log it), still
// matching it with errors.As.
func TestCallersGetRedactedErrors(t *testing.T) {
	ctx := context.Background()
	st := tokentest.NewStore()
	s := newSource(t, token.FetcherFunc(func(context.Context) (token.Token, error) { return token.Token{}, secretError{} }), st, opts())
	for range 2 { // the failure itself, then the backoff
		_, err := s.Token(ctx)
		if err == nil || strings.Contains(err.Error(), secret) || !errors.As(err, new(secretError)) {
			t.Errorf("err = %v: want the fetcher's error, redacted", err)
		}
	}
}

// TestResetBackoffEndsTheFetchCap: ResetBackoff, which the cap's error
// names, ends the cap too.
func TestResetBackoffEndsTheFetchCap(t *testing.T) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	st := tokentest.NewStore()
	s := newSource(t, up, st, opts())
	var err error
	for range 3 * token.MaxFetchesPerLifetime {
		var tok token.Token
		if tok, err = s.Token(ctx); err != nil {
			break
		}
		_ = s.Invalidate(ctx, tok.Value)
	}
	if !errors.Is(err, token.ErrTooManyFetches) {
		t.Fatalf("err = %v, want ErrTooManyFetches", err)
	}
	if err := s.ResetBackoff(ctx); err != nil {
		t.Fatal(err)
	}
	if tok, err := s.Token(ctx); err != nil || !up.Valid(tok.Value) {
		t.Errorf("after ResetBackoff: %v, %v", tok, err)
	}
}

// backoffGate holds LoadBackoff after it has read the record, so that a
// test can reset the backoff in between.
type backoffGate struct {
	*tokentest.Store
	read    chan struct{}
	release chan struct{}
	once    sync.Once
}

func (g *backoffGate) LoadBackoff(ctx context.Context) (token.SharedBackoff, error) {
	b, err := g.Store.LoadBackoff(ctx)
	g.once.Do(func() {
		close(g.read)
		<-g.release
	})
	return b, err
}

// TestResetBackoffBeatsARefreshInFlight: a refresh that read the backoff
// record just before ResetBackoff does not report it: its callers get a
// token, not the backoff the reset ended.
func TestResetBackoffBeatsARefreshInFlight(t *testing.T) {
	ctx := context.Background()
	up := tokentest.New(time.Hour)
	st := &backoffGate{Store: tokentest.NewStore(), read: make(chan struct{}), release: make(chan struct{})}
	_ = st.SaveBackoff(ctx, token.SharedBackoff{Failures: 1, Remaining: time.Hour, Class: token.ClassPermanent})
	s, err := token.NewSource("test", up, st, st, opts())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan error, 1)
	go func() {
		_, err := s.Token(ctx)
		got <- err
	}()
	<-st.read // the refresh has read the hour-long backoff
	if err := s.ResetBackoff(ctx); err != nil {
		t.Fatal(err)
	}
	close(st.release)
	if err := <-got; err != nil {
		t.Errorf("Token after ResetBackoff: %v, want a token", err)
	}
}
