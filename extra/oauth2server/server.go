package oauth2server

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
)

// Endpoint paths, relative to Server.URL.
const (
	TokenPath     = "/oauth2/token"
	AuthorizePath = "/oauth2/auth"
	RevokePath    = "/oauth2/revoke"
)

// RedirectURL is the redirect URI registered for every client. Nothing
// listens there: AuthorizeUser reads the code from the redirect without
// following it.
const RedirectURL = "http://127.0.0.1/callback"

// Client is an OAuth 2.0 client registered with the server.
type Client struct {
	// ID and Secret authenticate the client (confidential clients only).
	ID, Secret string
	// Grants are the grant types the client may use: "client_credentials",
	// "authorization_code", "refresh_token".
	Grants []string
	// Scopes are the scopes the client may request.
	Scopes []string
}

// Options configure a Server.
type Options struct {
	// Clients are the registered clients.
	Clients []Client
	// AccessTokenLifespan is how long an access token lives (default one
	// hour). fosite rounds expiry times to the second and truncates
	// expires_in, so use whole seconds of at least 2: with 1 s, expires_in
	// can be 0, which golang.org/x/oauth2 reads as "never expires".
	AccessTokenLifespan time.Duration
	// RefreshTokenLifespan is how long a refresh token lives (default 30
	// days); -1 means forever.
	RefreshTokenLifespan time.Duration
	// ReuseGracePeriod keeps a redeemed refresh token valid for this long
	// after its first redemption: redeeming it again within the period
	// issues another token pair and revokes nothing. After it, reuse
	// revokes the family. 0 (the default) is fosite's strict rotation.
	// fosite v0.49.0 has no such setting (its memory storage leaves
	// graceful rotation to Ory Hydra's storage); this package's storage
	// implements it, as Hydra does, so a client can be tested against both
	// kinds of upstream.
	ReuseGracePeriod time.Duration
}

// Stats are a Server's counters.
type Stats struct {
	// Requests counts token-endpoint requests by grant_type, whatever
	// their outcome.
	Requests map[string]int
	// Issued counts the token-endpoint requests that issued a token, by
	// grant_type.
	Issued map[string]int
	// ReuseRevocations counts token families revoked because a refresh
	// token that had been redeemed (or revoked) was presented again. Each
	// such request adds one, including one presenting a token of a family
	// already revoked.
	ReuseRevocations int
	// CodeReuseRevocations counts token families revoked because an
	// authorization code was exchanged twice.
	CodeReuseRevocations int
}

// Server is a running authorization server.
type Server struct {
	// URL is the base URL, http://127.0.0.1:port, with no trailing slash.
	URL string

	ts       *httptest.Server
	provider fosite.OAuth2Provider
	store    *memStore
	clients  map[string]Client
}

// New starts a Server on a loopback port. The caller should Close it.
func New(opts Options) *Server {
	s := &Server{
		store:   newMemStore(opts.ReuseGracePeriod),
		clients: map[string]Client{},
	}
	for _, c := range opts.Clients {
		s.register(c)
	}
	cfg := newConfig(opts)
	s.provider = compose.Compose(cfg, s.store, compose.NewOAuth2HMACStrategy(cfg),
		compose.OAuth2AuthorizeExplicitFactory,
		compose.OAuth2ClientCredentialsGrantFactory,
		compose.OAuth2RefreshTokenGrantFactory,
		compose.OAuth2TokenIntrospectionFactory,
		compose.OAuth2TokenRevocationFactory,
	)
	mux := http.NewServeMux()
	mux.HandleFunc(TokenPath, s.token)
	mux.HandleFunc(AuthorizePath, s.authorize)
	mux.HandleFunc(RevokePath, s.revoke)
	s.ts = httptest.NewServer(mux)
	s.URL = s.ts.URL
	return s
}

// globalSecret keys the HMAC of every token of every Server of this
// process. Tokens are opaque random values signed with it; a test has no
// use for a fixed one.
var globalSecret = func() []byte {
	b := make([]byte, 32)
	rand.Read(b)
	return b
}()

// newConfig returns fosite's configuration for opts. Every field fosite
// would fill in lazily on first use is set here: fosite writes those
// fields from the request goroutines, a data race under -race.
func newConfig(opts Options) *fosite.Config {
	return &fosite.Config{
		AccessTokenLifespan:      opts.AccessTokenLifespan,
		RefreshTokenLifespan:     opts.RefreshTokenLifespan,
		GlobalSecret:             globalSecret,
		ClientSecretsHasher:      sha256Hasher{},
		ScopeStrategy:            fosite.ExactScopeStrategy,
		AudienceMatchingStrategy: fosite.DefaultAudienceMatchingStrategy,
		// Issue a refresh token to every client allowed the grant, without
		// requiring the "offline" scope, fosite's default.
		RefreshTokenScopes: []string{},
	}
}

// register adds c to the server.
func (s *Server) register(c Client) {
	hash, _ := sha256Hasher{}.Hash(context.Background(), []byte(c.Secret))
	s.clients[c.ID] = c
	s.store.clients[c.ID] = &fosite.DefaultClient{
		ID:            c.ID,
		Secret:        hash,
		RedirectURIs:  []string{RedirectURL},
		GrantTypes:    c.Grants,
		ResponseTypes: []string{"code"},
		Scopes:        c.Scopes,
	}
}

// Close stops the server and waits for its requests to end.
func (s *Server) Close() { s.ts.Close() }

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats { return s.store.snapshot() }

// Valid reports whether accessToken is an access token this server issued
// that has neither expired nor been revoked, as its introspection would.
func (s *Server) Valid(accessToken string) bool {
	return s.introspect(accessToken, fosite.AccessToken)
}

// RefreshActive reports whether refreshToken would be accepted by the
// token endpoint now, without redeeming it (presenting a retired one at
// the endpoint would revoke its family).
func (s *Server) RefreshActive(refreshToken string) bool {
	return s.introspect(refreshToken, fosite.RefreshToken)
}

// introspect reports whether token is a live token of type use.
func (s *Server) introspect(token string, use fosite.TokenType) bool {
	ctx := context.Background()
	got, _, err := s.provider.IntrospectToken(ctx, token, use, new(fosite.DefaultSession))
	// fosite falls back to the other token type: a refresh token must not
	// pass for an access token.
	return err == nil && got == use
}
