package oauth2server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Endpoint returns the server's endpoints for golang.org/x/oauth2. The
// client authenticates with HTTP Basic: auto-detection would send every
// request with a wrong secret twice, and the counters would show both.
func (s *Server) Endpoint() oauth2.Endpoint {
	return oauth2.Endpoint{
		AuthURL:   s.URL + AuthorizePath,
		TokenURL:  s.URL + TokenPath,
		AuthStyle: oauth2.AuthStyleInHeader,
	}
}

// Config returns the authorization-code configuration of the registered
// client clientID, with its secret and all its scopes. It panics if no
// such client is registered: a test's mistake.
func (s *Server) Config(clientID string) *oauth2.Config {
	c := s.client(clientID)
	return &oauth2.Config{
		ClientID:     c.ID,
		ClientSecret: c.Secret,
		Endpoint:     s.Endpoint(),
		RedirectURL:  RedirectURL,
		Scopes:       c.Scopes,
	}
}

// ClientCredentials returns the client-credentials configuration of the
// registered client clientID, asking for scopes. It panics if no such
// client is registered.
func (s *Server) ClientCredentials(clientID string, scopes ...string) *clientcredentials.Config {
	c := s.client(clientID)
	return &clientcredentials.Config{
		ClientID:     c.ID,
		ClientSecret: c.Secret,
		TokenURL:     s.URL + TokenPath,
		Scopes:       scopes,
		AuthStyle:    oauth2.AuthStyleInHeader,
	}
}

// client returns the registered client id.
func (s *Server) client(id string) Client {
	c, ok := s.clients[id]
	if !ok {
		panic(fmt.Sprintf("oauth2server: no client %q registered", id))
	}
	return c
}

// AuthorizeUser runs the authorization-code flow over HTTP for user and
// client clientID, as a browser and the client's callback would, and
// returns the tokens. They have the user's first refresh token, to seed a
// client with.
func (s *Server) AuthorizeUser(ctx context.Context, clientID, user string) (*oauth2.Token, error) {
	code, err := s.AuthorizeCode(ctx, clientID, user)
	if err != nil {
		return nil, err
	}
	return s.Config(clientID).Exchange(ctx, code)
}

// AuthorizeCode runs the first half of the authorization-code flow over
// HTTP: it gets the authorization URL for user and client clientID and
// returns the code the redirect carries, without following the redirect.
// The client exchanges it with Config(clientID).Exchange.
func (s *Server) AuthorizeCode(ctx context.Context, clientID, user string) (string, error) {
	state := rand.Text()
	authURL := s.Config(clientID).AuthCodeURL(state, oauth2.SetAuthURLParam("user", user))
	return s.authorizationCode(ctx, authURL, state)
}

// authorizationCode gets authURL and returns the code its redirect
// carries, after checking the redirect's state.
func (s *Server) authorizationCode(ctx context.Context, authURL, state string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		return "", err
	}
	// The redirect goes to the client's callback, which does not exist
	// here: stop at it and read it.
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode/100 != 3 {
		return "", fmt.Errorf("oauth2server: authorization: status %d, no redirect", resp.StatusCode)
	}
	q := loc.Query()
	if e := q.Get("error"); e != "" {
		return "", fmt.Errorf("oauth2server: authorization: %s: %s", e, q.Get("error_description"))
	}
	if q.Get("state") != state {
		return "", errors.New("oauth2server: authorization: redirect with the wrong state")
	}
	return q.Get("code"), nil
}
