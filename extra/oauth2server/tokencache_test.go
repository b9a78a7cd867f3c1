package oauth2server_test

// tokencache against fosite, as a user of the library would wire it: a
// token.Redeemer on golang.org/x/oauth2 and token.Sources sharing each
// user's credential across instances.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/extra/oauth2server"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// redeemer redeems a user's rotating refresh token with x/oauth2.
type redeemer struct {
	cfg *oauth2.Config
	// periods adds up, over the tokens redeemed, how long each should
	// serve before a Source refreshes it (lifetime less the refresh-ahead
	// window), and n counts them: what the number of refreshes is judged
	// by, since fosite truncates expires_in (a 3 s token may say 2).
	periods, n atomic.Int64
}

// Fetch is never called: a Source calls a Redeemer's Redeem.
func (*redeemer) Fetch(context.Context) (token.Token, error) {
	return token.Token{}, errors.New("redeemer: Fetch without a refresh token")
}

// Redeem implements token.Redeemer. invalid_grant is the upstream refusing
// the refresh token: permanent, until the user authorizes again.
func (r *redeemer) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	tok, err := r.cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: refresh}).Token()
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
		// The error reply carries no secret: it can be wrapped.
		return token.Token{}, "", fmt.Errorf("%w: %v", token.ErrRefreshRevoked, err)
	}
	if err != nil {
		return token.Token{}, "", err
	}
	life := time.Until(tok.Expiry)
	r.periods.Add(int64(life - min(max(life/5, time.Second), life/2))) // token.Options defaults
	r.n.Add(1)
	return token.Token{Value: tok.AccessToken, ExpiresAt: tok.Expiry}, tok.RefreshToken, nil
}

// instance is one process of the service: a Source per user, all sharing
// each user's store with the other instances.
type instance struct{ srcs []*token.Source }

// loadFigures is what a load run saw.
type loadFigures struct {
	calls, errs, invalid atomic.Int64
	firstErr             atomic.Value
}

func TestTokencacheLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	for _, life := range []time.Duration{2 * time.Second, 3 * time.Second, 5 * time.Second} {
		t.Run(life.String(), func(t *testing.T) { loadRun(t, life) })
	}
}

const (
	loadUsers      = 10
	loadInstances  = 4
	loadGoroutines = 16
)

// loadRun runs loadInstances instances × loadGoroutines callers asking for
// random users' tokens, against a fosite with access tokens of lifetime.
func loadRun(t *testing.T, life time.Duration) {
	srv := newServer(t, oauth2server.Options{AccessTokenLifespan: life})
	ctx := context.Background()
	rd := &redeemer{cfg: srv.Config("app")}
	insts := newInstances(t, srv, rd)
	before := srv.Stats()
	run := max(6*time.Second, 2*life)
	var fig loadFigures
	start := time.Now()
	var wg sync.WaitGroup
	for _, in := range insts {
		for range loadGoroutines {
			wg.Go(func() { in.call(ctx, srv, start.Add(run), &fig) })
		}
	}
	wg.Wait()
	st := srv.Stats()
	refreshes := st.Requests["refresh_token"] - before.Requests["refresh_token"]
	// Each user's token is redeemed once at the start, and then once its
	// refresh-ahead window opens: one per period per user.
	period := time.Duration(rd.periods.Load() / max(rd.n.Load(), 1))
	expect := float64(loadUsers) * (1 + run.Seconds()/period.Seconds())
	t.Logf("lifetime %v, %v: %d Token calls, %d errors, %d invalid tokens handed out; "+
		"fosite: %d refreshes (≈ %.0f expected at one per %v per user), %d reuse revocations",
		life, run, fig.calls.Load(), fig.errs.Load(), fig.invalid.Load(),
		refreshes, expect, period.Round(time.Millisecond), st.ReuseRevocations)
	if st.ReuseRevocations != 0 {
		t.Errorf("%d token families revoked for reuse, want 0", st.ReuseRevocations)
	}
	if n := fig.errs.Load(); n != 0 {
		t.Errorf("%d Token errors, first: %v", n, fig.firstErr.Load())
	}
	// fosite retires the access token issued with a refresh token when
	// that is redeemed: a token handed out by another instance between the
	// redemption and the new token's arrival is already dead.
	if n := fig.invalid.Load(); n > fig.calls.Load()/100 {
		t.Errorf("%d invalid tokens handed out, want under 1%%", n)
	}
	if f := float64(refreshes); f < 0.7*expect || f > 1.5*expect {
		t.Errorf("%d refreshes, want about %.0f", refreshes, expect)
	}
}

// newInstances authorizes loadUsers users and returns loadInstances
// instances sharing their credentials, each user's seeded once.
func newInstances(t *testing.T, srv *oauth2server.Server, rd *redeemer) []*instance {
	t.Helper()
	insts := make([]*instance, loadInstances)
	for i := range insts {
		insts[i] = &instance{}
	}
	for u := range loadUsers {
		user := fmt.Sprintf("user%d", u)
		store := tokentest.NewStore() // Redis (rediscache) in production
		for _, in := range insts {
			s, err := token.NewSource("oauth:app:"+user, rd, store, store, token.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			in.srcs = append(in.srcs, s)
		}
		tok := authorize(t, srv, user)
		// The authorization callback runs on one instance.
		if err := insts[u%loadInstances].srcs[u].SeedRefresh(context.Background(), tok.RefreshToken); err != nil {
			t.Fatal(err)
		}
	}
	return insts
}

// call asks for random users' tokens until the deadline, a few
// milliseconds apart, and checks each with the server as the API the
// token is for would.
func (in *instance) call(ctx context.Context, srv *oauth2server.Server, end time.Time, fig *loadFigures) {
	for time.Now().Before(end) {
		tok, err := in.srcs[rand.IntN(len(in.srcs))].Token(ctx)
		fig.calls.Add(1)
		switch {
		case err != nil:
			if fig.errs.Add(1) == 1 {
				fig.firstErr.Store(err)
			}
		case !srv.Valid(tok.Value):
			fig.invalid.Add(1)
		}
		time.Sleep(time.Duration(2+rand.IntN(6)) * time.Millisecond)
	}
}
