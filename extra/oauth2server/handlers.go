package oauth2server

import (
	"context"
	"net/http"

	"github.com/ory/fosite"
)

// token serves the token endpoint.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	grant := r.PostFormValue("grant_type")
	// The storage reads the grant type to tell which revocations fosite
	// makes because a token or code was reused.
	ctx := context.WithValue(r.Context(), grantKey{}, grant)
	ar, err := s.provider.NewAccessRequest(ctx, r, new(fosite.DefaultSession))
	if err != nil {
		s.store.count(grant, false)
		s.provider.WriteAccessError(ctx, w, ar, err)
		return
	}
	if ar.GetGrantTypes().ExactOne("client_credentials") {
		// No user consents to a client's own grant: the client gets the
		// scopes it asks for, which fosite has checked it may have.
		for _, scope := range ar.GetRequestedScopes() {
			ar.GrantScope(scope)
		}
	}
	resp, err := s.provider.NewAccessResponse(ctx, ar)
	if err != nil {
		s.store.count(grant, false)
		s.provider.WriteAccessError(ctx, w, ar, err)
		return
	}
	s.store.count(grant, true)
	s.provider.WriteAccessResponse(ctx, w, ar, resp)
}

// authorize serves the authorization endpoint. It consents at once, for
// the user named by the "user" query parameter and to every scope asked:
// a test stands in for both the login and the consent page.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ar, err := s.provider.NewAuthorizeRequest(ctx, r)
	if err != nil {
		s.provider.WriteAuthorizeError(ctx, w, ar, err)
		return
	}
	user := r.URL.Query().Get("user")
	if user == "" {
		s.provider.WriteAuthorizeError(ctx, w, ar,
			fosite.ErrAccessDenied.WithHint("The test authorization endpoint needs a 'user' parameter."))
		return
	}
	for _, scope := range ar.GetRequestedScopes() {
		ar.GrantScope(scope)
	}
	resp, err := s.provider.NewAuthorizeResponse(ctx, ar, &fosite.DefaultSession{Subject: user, Username: user})
	if err != nil {
		s.provider.WriteAuthorizeError(ctx, w, ar, err)
		return
	}
	s.provider.WriteAuthorizeResponse(ctx, w, ar, resp)
}

// revoke serves the revocation endpoint (RFC 7009).
func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	s.provider.WriteRevocationResponse(ctx, w, s.provider.NewRevocationRequest(ctx, r))
}
