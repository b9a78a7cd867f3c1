package oauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/token"
)

// ErrNoExpiry is returned for a token reply without expires_in when no
// DefaultLifetime was set: such a token would never be refreshed.
var ErrNoExpiry = errors.New("oauth: the token endpoint gave no expires_in and DefaultLifetime is not set")

// ErrSameToken is returned when the endpoint answers a new request with the
// access token it returned for the previous one: a caching TokenSource, or
// an endpoint that reissues tokens until they expire. Fetching again at once
// would only get it again; the shared backoff paces the next try.
var ErrSameToken = errors.New("oauth: the token endpoint returned the previous access token again")

// ClientCredentials is the token.Fetcher of the client credentials grant
// (RFC 6749 section 4.4): machine-to-machine tokens, one per client and
// scopes. Name it with Name(Config). Set Config.AuthStyle: with the
// default auto-detection x/oauth2 sends every refused request twice. Give
// each Source its own: it remembers the last token it fetched
// (ErrSameToken). Set its fields before first use.
type ClientCredentials struct {
	// Config is the client. Its Token method is called once per fetch.
	Config *clientcredentials.Config
	// HTTPClient makes the requests. Default http.DefaultClient.
	HTTPClient *http.Client
	// DefaultLifetime is the lifetime of a token whose reply has no
	// expires_in. Default 0: such a reply is an error (ErrNoExpiry).
	DefaultLifetime time.Duration

	last lastToken
}

// Fetch implements token.Fetcher.
func (f *ClientCredentials) Fetch(ctx context.Context) (token.Token, error) {
	sent := time.Now()
	t, err := f.Config.Token(withClient(ctx, f.HTTPClient))
	if err != nil {
		return token.Token{}, endpointError(GrantClientCredentials, err)
	}
	return f.last.accept(t, sent, f.DefaultLifetime)
}

// Identity implements token.Identifier: the account is the client at its
// token endpoint, the secret its client secret.
func (f *ClientCredentials) Identity() token.Identity {
	return token.Identity{Account: "oauth2:" + f.Config.TokenURL + " " + f.Config.ClientID, Secret: []byte(f.Config.ClientSecret)}
}

// Refresher is the token.Redeemer of a user's tokens obtained with the
// authorization code grant and refreshed with a refresh token the endpoint
// may rotate (RFC 6749 section 6; OAuth 2.0 Security BCP section 4.14):
// the Source redeems it under its lock, commits the new one before the
// access token is shared, and never redeems one twice. Seed each user's
// credential with the refresh token of the code exchange:
//
//	tok, err := cfg.Exchange(ctx, code)
//	...
//	err = src.SeedRefresh(ctx, tok.RefreshToken)
//
// A refresh token the endpoint refuses (invalid_grant) gives an *Error that
// matches token.ErrRefreshRevoked: the user must sign in again. Name each
// user's credential with UserName. Set Config.Endpoint.AuthStyle: with
// auto-detection x/oauth2 resends a failed request, which would redeem a
// refresh token twice, so Redeem refuses it (token.ErrInvalidConfig). Set
// its fields before first use.
type Refresher struct {
	// Config is the client; only its Endpoint, ClientID and ClientSecret
	// are used.
	Config *oauth2.Config
	// HTTPClient makes the requests. Default http.DefaultClient.
	HTTPClient *http.Client
	// DefaultLifetime is the lifetime of a token whose reply has no
	// expires_in. Default 0: such a reply is an error (ErrNoExpiry).
	DefaultLifetime time.Duration

	last lastToken
}

// Fetch implements token.Fetcher; a Source calls Redeem instead.
func (r *Refresher) Fetch(context.Context) (token.Token, error) {
	return token.Token{}, fmt.Errorf("oauth: a user's token needs a refresh token: %w", token.ErrNoRefreshState)
}

// Redeem implements token.Redeemer. next is "" if the endpoint kept the
// refresh token.
func (r *Refresher) Redeem(ctx context.Context, refresh string) (tok token.Token, next string, err error) {
	if r.Config.Endpoint.AuthStyle == oauth2.AuthStyleAutoDetect {
		// x/oauth2 would send a request that failed in any way once
		// more, with the same refresh token: a second redemption.
		return token.Token{}, "", fmt.Errorf("oauth: Refresher: set Config.Endpoint.AuthStyle (auto-detection resends a refresh token): %w", token.ErrInvalidConfig)
	}
	sent := time.Now()
	// An expired token with only the refresh token makes x/oauth2 refresh.
	ts := r.Config.TokenSource(withClient(ctx, r.HTTPClient), &oauth2.Token{RefreshToken: refresh})
	t, err := ts.Token()
	if err != nil {
		return token.Token{}, "", endpointError(GrantRefreshToken, err)
	}
	if t.RefreshToken != refresh {
		next = t.RefreshToken
	}
	if tok, err = r.last.accept(t, sent, r.DefaultLifetime); err != nil {
		// The endpoint replaced refresh all the same: the Source
		// commits next.
		return token.Token{}, next, err
	}
	return tok, next, nil
}

// Identity implements token.Identifier: the account is the client at its
// token endpoint, the secret its client secret.
func (r *Refresher) Identity() token.Identity {
	return token.Identity{Account: "oauth2:" + r.Config.Endpoint.TokenURL + " " + r.Config.ClientID, Secret: []byte(r.Config.ClientSecret)}
}

func withClient(ctx context.Context, hc *http.Client) context.Context {
	if hc == nil {
		return ctx
	}
	return context.WithValue(ctx, oauth2.HTTPClient, hc)
}

// lastToken remembers a digest of the last access token fetched.
type lastToken struct{ digest atomic.Pointer[[32]byte] }

// accept turns t, requested at sent, into a token.Token, refusing the
// previous one again and a reply without a lifetime.
func (l *lastToken) accept(t *oauth2.Token, sent time.Time, def time.Duration) (token.Token, error) {
	if t == nil || t.AccessToken == "" {
		return token.Token{}, fmt.Errorf("oauth: the token endpoint returned no access token: %w", token.ErrInvalidToken)
	}
	d := sha256.Sum256([]byte(t.AccessToken))
	if old := l.digest.Swap(&d); old != nil && *old == d {
		return token.Token{}, ErrSameToken
	}
	if t.Expiry.IsZero() {
		if def <= 0 {
			return token.Token{}, ErrNoExpiry
		}
		return token.Token{Value: t.AccessToken, ExpiresAt: sent.Add(def)}, nil
	}
	// x/oauth2 counts expires_in from the reply; count it from the request.
	return token.Token{Value: t.AccessToken, ExpiresAt: t.Expiry.Add(-time.Since(sent))}, nil
}
