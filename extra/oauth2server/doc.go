// Package oauth2server provides a real OAuth 2.0 authorization server for
// tests, in the style of net/http/httptest: New starts it on a loopback
// port, Server.URL is its address and Server.Close stops it.
//
// It is github.com/ory/fosite, composed with in-memory storage, not a fake:
// the token endpoint (/oauth2/token) serves the client_credentials,
// authorization_code and refresh_token grants, the authorization endpoint
// (/oauth2/auth) consents at once for the user named in its "user" query
// parameter, and /oauth2/revoke revokes tokens (RFC 7009). Errors are
// fosite's standard OAuth 2.0 JSON replies, so golang.org/x/oauth2 returns
// a *oauth2.RetrieveError with ErrorCode "invalid_client" for a bad client
// secret and "invalid_grant" for a refresh token that was revoked or
// already used.
//
// Refresh tokens rotate: each refresh returns a new refresh token and
// retires the one presented. Presenting a retired refresh token again is
// treated by fosite as theft (RFC 6819, section 5.2.2.3): the reply is
// invalid_grant and the whole token family, every access and refresh token
// descended from the same authorization, is revoked. That is the behaviour
// a client sharing one credential across instances must never trigger, and
// Stats.ReuseRevocations counts it. Options.ReuseGracePeriod relaxes it as
// some providers (Ory Hydra among them) can.
//
// The package keeps fosite's dependency tree out of the modules that test
// with it: it is a module of its own.
package oauth2server
