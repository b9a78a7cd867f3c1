// Package oauth shares OAuth2 tokens across a cluster with golang.org/x/oauth2:
// every instance of a service uses the one token per credential that a
// token.Source keeps in the shared store, instead of one per process
// (oauth2.ReuseTokenSource) or one per call (clientcredentials.Config).
//
// Three pieces, each usable alone:
//
//   - Fetchers that a token.Source calls under its lock: ClientCredentials
//     (the client credentials grant, machine-to-machine tokens) and Refresher
//     (a user's tokens, redeemed with a rotating refresh token: a
//     token.Redeemer, so the refresh token is never redeemed twice and never
//     lost; seed it from the authorization-code exchange with
//     Source.SeedRefresh). Name and UserName derive credential names.
//   - TokenSource: an oauth2.TokenSource backed by a token.Source, for code
//     that takes one.
//   - Transport: an http.RoundTripper that adds the bearer token and, when
//     the API rejects it (401 with error="invalid_token", RFC 6750),
//     invalidates it cluster-wide and sends the request once more.
//
// Use Transport, or oauth2.Transport{Source: TokenSource(src, 0)}; not
// oauth2.NewClient, which wraps any source in a ReuseTokenSource that keeps
// the token per process until it expires, so the cluster's refresh ahead and
// invalidation never reach it.
//
// Errors from the token endpoint are *Error values: their message holds the
// grant, the HTTP status and RFC 6749's error code, never the reply's body.
// invalid_client, unauthorized_client, invalid_grant, invalid_scope and
// unsupported_grant_type are permanent (the shared backoff waits long); a
// refused refresh token (invalid_grant) also matches token.ErrRefreshRevoked;
// 429 and 5xx are temporary, and their Retry-After is honoured.
package oauth
