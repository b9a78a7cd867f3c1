package oauth

import (
	"context"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/token"
)

// DefaultTimeout bounds a TokenSource's wait for a token when none was
// given: oauth2.TokenSource.Token has no context of its own.
const DefaultTimeout = 30 * time.Second

// Source is what TokenSource and Transport take tokens from: a
// *token.Source.
type Source interface {
	Token(ctx context.Context) (token.Token, error)
}

// cacher is a Source that can hand out its token without a context.
type cacher interface {
	Cached() (token.Token, bool)
}

// TokenSource returns an oauth2.TokenSource that hands out src's tokens:
// one token per credential for the whole cluster. Each call that must wait
// (a refresh, another instance's refresh) is bounded by timeout (0:
// DefaultTimeout); a fresh token costs one allocation, the *oauth2.Token,
// which is the caller's (x/oauth2 writes to the tokens it caches).
//
// Do not wrap it in oauth2.ReuseTokenSource (oauth2.NewClient does): that
// keeps a token per process until it expires, past the cluster's refresh
// ahead and invalidations. Use Transport, or oauth2.Transport directly.
func TokenSource(src Source, timeout time.Duration) oauth2.TokenSource {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ts := &tokenSource{src: src, timeout: timeout}
	ts.cached, _ = src.(cacher)
	return ts
}

type tokenSource struct {
	src     Source
	cached  cacher // src, if it is one; else nil
	timeout time.Duration
}

// Token implements oauth2.TokenSource.
func (ts *tokenSource) Token() (*oauth2.Token, error) {
	if ts.cached != nil {
		if t, ok := ts.cached.Cached(); ok {
			return bearer(t), nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), ts.timeout)
	defer cancel()
	t, err := ts.src.Token(ctx)
	if err != nil {
		return nil, err
	}
	return bearer(t), nil
}

func bearer(t token.Token) *oauth2.Token {
	return &oauth2.Token{AccessToken: t.Value, TokenType: "Bearer", Expiry: t.ExpiresAt}
}
