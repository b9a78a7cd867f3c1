package oauth2server_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/extra/oauth2server"
)

// testClients are a service client (client credentials) and an app that
// users authorize (authorization code, refresh tokens).
var testClients = []oauth2server.Client{
	{ID: "svc", Secret: "svc-secret", Grants: []string{"client_credentials"}, Scopes: []string{"read", "write"}},
	{ID: "app", Secret: "app-secret", Grants: []string{"authorization_code", "refresh_token"}, Scopes: []string{"profile"}},
}

func newServer(t *testing.T, opts oauth2server.Options) *oauth2server.Server {
	t.Helper()
	opts.Clients = testClients
	srv := oauth2server.New(opts)
	t.Cleanup(srv.Close)
	return srv
}

// errorCode returns the OAuth2 error code of err, or "" if it is not an
// error reply.
func errorCode(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return ""
}

func TestClientCredentials(t *testing.T) {
	srv := newServer(t, oauth2server.Options{AccessTokenLifespan: 10 * time.Second})
	ctx := context.Background()
	tok, err := srv.ClientCredentials("svc", "read").Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.RefreshToken != "" {
		t.Fatalf("access token %t, refresh token %t: want only an access token",
			tok.AccessToken != "", tok.RefreshToken != "")
	}
	if left := time.Until(tok.Expiry); left < 8*time.Second || left > 11*time.Second {
		t.Errorf("expires in %v, want about 10s", left)
	}
	if !srv.Valid(tok.AccessToken) {
		t.Error("the new access token is not Valid")
	}
	if srv.Valid("ory_at_not-a-token.x") || srv.Valid("") {
		t.Error("a made-up token is Valid")
	}

	bad := srv.ClientCredentials("svc", "read")
	bad.ClientSecret = "wrong"
	if _, err := bad.Token(ctx); errorCode(err) != "invalid_client" {
		t.Errorf("wrong secret: %v, want invalid_client", err)
	}
	if _, err := srv.ClientCredentials("svc", "admin").Token(ctx); errorCode(err) != "invalid_scope" {
		t.Errorf("scope not allowed: %v, want invalid_scope", err)
	}
	st := srv.Stats()
	if st.Requests["client_credentials"] != 3 || st.Issued["client_credentials"] != 1 {
		t.Errorf("stats %+v, want 3 requests, 1 issued", st)
	}
}

func TestAccessTokenExpires(t *testing.T) {
	srv := newServer(t, oauth2server.Options{AccessTokenLifespan: 2 * time.Second})
	tok, err := srv.ClientCredentials("svc").Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tok.Expiry.IsZero() {
		t.Fatal("no expiry: expires_in was 0")
	}
	if !srv.Valid(tok.AccessToken) {
		t.Fatal("not Valid when issued")
	}
	time.Sleep(time.Until(tok.Expiry) + 1100*time.Millisecond)
	if srv.Valid(tok.AccessToken) {
		t.Error("still Valid after its expiry")
	}
}

// authorize returns a user's first tokens.
func authorize(t *testing.T, srv *oauth2server.Server, user string) *oauth2.Token {
	t.Helper()
	tok, err := srv.AuthorizeUser(context.Background(), "app", user)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatalf("access token %t, refresh token %t: want both",
			tok.AccessToken != "", tok.RefreshToken != "")
	}
	return tok
}

// refresh redeems a refresh token.
func refresh(srv *oauth2server.Server, rt string) (*oauth2.Token, error) {
	return srv.Config("app").TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt}).Token()
}

func TestAuthorizationCode(t *testing.T) {
	srv := newServer(t, oauth2server.Options{})
	tok := authorize(t, srv, "alice")
	if !srv.Valid(tok.AccessToken) || !srv.RefreshActive(tok.RefreshToken) {
		t.Error("new tokens not valid")
	}
	if srv.Valid(tok.RefreshToken) || srv.RefreshActive(tok.AccessToken) {
		t.Error("a token passes for the other kind")
	}
	// An unknown client is refused at the authorization endpoint.
	if _, err := srv.AuthorizeUser(context.Background(), "svc", "alice"); err == nil {
		t.Error("a client without the authorization_code grant was authorized")
	}
	st := srv.Stats()
	if st.Issued["authorization_code"] != 1 {
		t.Errorf("stats %+v, want 1 code exchanged", st)
	}
}

func TestRefreshRotates(t *testing.T) {
	srv := newServer(t, oauth2server.Options{})
	tok := authorize(t, srv, "alice")
	seen := map[string]bool{tok.RefreshToken: true}
	for range 3 {
		next, err := refresh(srv, tok.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if seen[next.RefreshToken] || next.RefreshToken == "" {
			t.Fatal("refresh did not rotate the refresh token")
		}
		seen[next.RefreshToken] = true
		// The redeemed refresh token and the access token issued with it
		// are retired; the new pair is live.
		if srv.RefreshActive(tok.RefreshToken) || srv.Valid(tok.AccessToken) {
			t.Error("the redeemed pair is still live")
		}
		if !srv.RefreshActive(next.RefreshToken) || !srv.Valid(next.AccessToken) {
			t.Error("the new pair is not live")
		}
		tok = next
	}
	if st := srv.Stats(); st.Issued["refresh_token"] != 3 || st.ReuseRevocations != 0 {
		t.Errorf("stats %+v, want 3 refreshes, no revocation", st)
	}
}

func TestRefreshReuseRevokesFamily(t *testing.T) {
	srv := newServer(t, oauth2server.Options{})
	first := authorize(t, srv, "alice")
	other := authorize(t, srv, "bob")
	second, err := refresh(srv, first.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	newest, err := refresh(srv, second.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	// Present the first, retired, refresh token again.
	if _, err := refresh(srv, first.RefreshToken); errorCode(err) != "invalid_grant" {
		t.Fatalf("reuse: %v, want invalid_grant", err)
	}
	if n := srv.Stats().ReuseRevocations; n != 1 {
		t.Errorf("ReuseRevocations = %d, want 1", n)
	}
	// The whole family is revoked, the newest pair too; another user's is not.
	if srv.Valid(newest.AccessToken) || srv.RefreshActive(newest.RefreshToken) {
		t.Error("the newest pair of the family survived the reuse")
	}
	if !srv.Valid(other.AccessToken) || !srv.RefreshActive(other.RefreshToken) {
		t.Error("another user's tokens were revoked")
	}
	// Presenting the newest (now revoked) token is refused, and fosite
	// counts it as a reuse too.
	if _, err := refresh(srv, newest.RefreshToken); errorCode(err) != "invalid_grant" {
		t.Errorf("revoked refresh token: %v, want invalid_grant", err)
	}
	if n := srv.Stats().ReuseRevocations; n != 2 {
		t.Errorf("ReuseRevocations = %d, want 2", n)
	}
	// Only a new authorization ends it.
	again := authorize(t, srv, "alice")
	if _, err := refresh(srv, again.RefreshToken); err != nil {
		t.Errorf("refresh after a new authorization: %v", err)
	}
}

func TestReuseGracePeriod(t *testing.T) {
	const grace = 2 * time.Second
	srv := newServer(t, oauth2server.Options{ReuseGracePeriod: grace})
	first := authorize(t, srv, "alice")
	start := time.Now()
	a, err := refresh(srv, first.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	// Within the grace period the redeemed token still works, issues a
	// new pair and revokes nothing: both children live.
	b, err := refresh(srv, first.RefreshToken)
	if err != nil {
		t.Fatalf("reuse within the grace period: %v", err)
	}
	if time.Since(start) >= grace {
		t.Skip("too slow to test within the grace period")
	}
	if a.RefreshToken == b.RefreshToken || !srv.RefreshActive(a.RefreshToken) || !srv.RefreshActive(b.RefreshToken) {
		t.Error("the two redemptions did not give two live refresh tokens")
	}
	if n := srv.Stats().ReuseRevocations; n != 0 {
		t.Errorf("ReuseRevocations = %d within the grace period, want 0", n)
	}
	// After it, reuse revokes the family as without a grace period.
	time.Sleep(time.Until(start.Add(grace)) + 50*time.Millisecond)
	if _, err := refresh(srv, first.RefreshToken); errorCode(err) != "invalid_grant" {
		t.Fatalf("reuse after the grace period: %v, want invalid_grant", err)
	}
	if n := srv.Stats().ReuseRevocations; n != 1 {
		t.Errorf("ReuseRevocations = %d, want 1", n)
	}
	if srv.RefreshActive(a.RefreshToken) || srv.Valid(b.AccessToken) {
		t.Error("the family survived reuse after the grace period")
	}
}

func TestCodeReuseRevokes(t *testing.T) {
	srv := newServer(t, oauth2server.Options{})
	// Exchange one code twice: the second exchange fails and revokes what
	// the first issued.
	cfg := srv.Config("app")
	ctx := context.Background()
	code, err := srv.AuthorizeCode(ctx, "app", "alice")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cfg.Exchange(ctx, code)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Exchange(ctx, code); errorCode(err) != "invalid_grant" {
		t.Fatalf("second exchange: %v, want invalid_grant", err)
	}
	if srv.Valid(tok.AccessToken) || srv.RefreshActive(tok.RefreshToken) {
		t.Error("tokens of a reused code survived")
	}
	if st := srv.Stats(); st.CodeReuseRevocations != 1 || st.ReuseRevocations != 0 {
		t.Errorf("stats %+v, want 1 code reuse revocation", st)
	}
}

func TestRevokeEndpoint(t *testing.T) {
	srv := newServer(t, oauth2server.Options{})
	tok := authorize(t, srv, "alice")
	if err := revoke(srv, tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	if srv.RefreshActive(tok.RefreshToken) || srv.Valid(tok.AccessToken) {
		t.Error("revoked tokens still live")
	}
	if _, err := refresh(srv, tok.RefreshToken); errorCode(err) != "invalid_grant" {
		t.Errorf("revoked refresh token: %v, want invalid_grant", err)
	}
}

// revoke revokes token at the revocation endpoint, as client "app".
func revoke(srv *oauth2server.Server, token string) error {
	form := url.Values{"token": {token}}
	req, err := http.NewRequest(http.MethodPost, srv.URL+oauth2server.RevokePath, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("app", "app-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("revoke: status %d", resp.StatusCode)
	}
	return nil
}
