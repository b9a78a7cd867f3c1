package wechattest

// WeChat Open Platform (第三方平台): a third-party platform (the component)
// gets a component_access_token with the component_verify_ticket that
// WeChat pushes to it every 10 minutes, and with it an authorizer_access_token
// for each account that authorized it, by redeeming that account's
// authorizer_refresh_token:
//
//	POST /cgi-bin/component/api_component_token
//	     {"component_appid","component_appsecret","component_verify_ticket"}
//	  -> {"component_access_token","expires_in"}
//	POST /cgi-bin/component/api_authorizer_token?component_access_token=...
//	     {"component_appid","authorizer_appid","authorizer_refresh_token"}
//	  -> {"authorizer_access_token","expires_in","authorizer_refresh_token"}

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// Open Platform credentials the server accepts by default.
const (
	DefaultComponentAppID  = "wxc0ffee0123456789"
	DefaultComponentSecret = "TestComponentSecret-0a1b2c3d4e5f60718293"
)

// Endpoint names of the Open Platform for Count.
const (
	EndpointComponentToken  = "api_component_token"
	EndpointAuthorizerToken = "api_authorizer_token" // every call
	// EndpointAuthorizerRedeemed counts redemptions that issued a token.
	EndpointAuthorizerRedeemed = "authorizer_redeemed"
	// EndpointAuthorizerRevoked counts authorizations revoked because a
	// retired refresh token was redeemed again (RotateAuthorizerRefresh).
	EndpointAuthorizerRevoked = "authorizer_revoked"
)

const (
	kindComponent  = "component"
	kindAuthorizer = "authorizer"
)

// The errcodes of the Open Platform the server answers.
const (
	codeNotAuthorized   = 61003 // component is not authorized by this account
	codeInvalidTicket   = 61006 // component ticket is invalid
	codeInvalidComp     = 61011 // invalid component
	codeInvalidRefresh  = 61023 // refresh_token is invalid
	codeInvalidAppSec   = 40125 // invalid appsecret
	codeDataFormatError = 47001 // data format error
)

// openState is the Open Platform's state, guarded by Server.mu.
type openState struct {
	component *issued
	tickets   map[string]time.Time      // verify tickets pushed, and when they expire
	ticket    string                    // the last one pushed
	pushed    time.Time                 // when
	auths     map[string]*authorization // by authKey(component, authorizer)
	refreshes map[string]*authorization // by every refresh token ever issued
}

// authorization is one account's authorization of the component: a chain of
// refresh tokens, of which only current is redeemable.
type authorization struct {
	current string
	access  *issued
	revoked bool // by a reuse, or by Unauthorize
}

func newOpenState() openState {
	return openState{tickets: map[string]time.Time{}, auths: map[string]*authorization{}, refreshes: map[string]*authorization{}}
}

func authKey(component, authorizer string) string { return component + "\x00" + authorizer }

// VerifyTicket returns the component_verify_ticket WeChat pushed last.
// WeChat pushes one every 10 minutes: if the last is older than 10 min ×
// Scale (or there is none), VerifyTicket pushes a new one first.
func (s *Server) VerifyTicket() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open.ticket == "" || !time.Now().Before(s.open.pushed.Add(s.opts.scale(10*time.Minute))) {
		s.pushTicketLocked()
	}
	return s.open.ticket
}

// PushVerifyTicket pushes a new component_verify_ticket, as WeChat does
// every 10 minutes, and returns it. Tickets stay valid for 12 h × Scale.
func (s *Server) PushVerifyTicket() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pushTicketLocked()
	return s.open.ticket
}

func (s *Server) pushTicketLocked() {
	s.open.ticket, s.open.pushed = "ticket@@@"+randomHex(32), time.Now()
	s.open.tickets[s.open.ticket] = s.open.pushed.Add(s.opts.scale(12 * time.Hour))
}

// Authorize records that the account authorizerAppID authorized the
// platform componentAppID (an authorization code exchange, api_query_auth,
// would return the same refresh token in
// authorization_info.authorizer_refresh_token) and returns its first
// authorizer_refresh_token. A previous authorization of the same account is
// replaced: its refresh tokens are refused from now on (61023).
func (s *Server) Authorize(componentAppID, authorizerAppID string) (refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := authKey(componentAppID, authorizerAppID)
	if old := s.open.auths[key]; old != nil {
		old.revoked = true
	}
	a := &authorization{current: s.newRefreshLocked()}
	s.open.auths[key] = a
	s.open.refreshes[a.current] = a
	return a.current
}

// Unauthorize records that the account revoked its authorization of the
// platform: redemptions answer 61003 until it authorizes again.
func (s *Server) Unauthorize(componentAppID, authorizerAppID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.open.auths[authKey(componentAppID, authorizerAppID)]; a != nil {
		a.revoked = true
		delete(s.open.auths, authKey(componentAppID, authorizerAppID))
	}
}

// newRefreshLocked returns a refresh token in WeChat's format.
func (s *Server) newRefreshLocked() string {
	return "refreshtoken@@@" + randomHex(22)
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Server) componentToken(w http.ResponseWriter, r *http.Request) {
	if !s.delay(r) {
		return
	}
	var req struct {
		AppID  string `json:"component_appid"`
		Secret string `json:"component_appsecret"`
		Ticket string `json:"component_verify_ticket"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		errReply(w, codeDataFormatError, "data format error")
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[EndpointComponentToken]++
	if s.injectedLocked(w) {
		return
	}
	exp, ok := s.open.tickets[req.Ticket]
	switch {
	case req.AppID != s.opts.ComponentAppID:
		errReply(w, codeInvalidComp, "invalid component")
	case req.Secret != s.opts.ComponentSecret:
		errReply(w, codeInvalidAppSec, "invalid appsecret")
	case !ok || !now.Before(exp):
		errReply(w, codeInvalidTicket, "component ticket is invalid")
	default:
		s.open.component = s.issueLocked(s.open.component, "CT", now)
		s.open.component.kind = kindComponent
		reply(w, map[string]any{"component_access_token": s.open.component.value, "expires_in": int(s.opts.Lifetime / time.Second)})
	}
}

// authorizerRequest is the body of api_authorizer_token.
type authorizerRequest struct {
	ComponentAppID  string `json:"component_appid"`
	AuthorizerAppID string `json:"authorizer_appid"`
	RefreshToken    string `json:"authorizer_refresh_token"`
}

func (s *Server) authorizerToken(w http.ResponseWriter, r *http.Request) {
	if !s.delay(r) {
		return
	}
	var req authorizerRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		errReply(w, codeDataFormatError, "data format error")
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[EndpointAuthorizerToken]++
	if s.injectedLocked(w) || !s.componentTokenLocked(w, r.URL.Query().Get("component_access_token"), req.ComponentAppID, now) {
		return
	}
	a, ok := s.redeemableLocked(w, req)
	if !ok {
		return
	}
	a.access = s.issueLocked(a.access, "AA", now)
	a.access.kind = kindAuthorizer
	if s.opts.RotateAuthorizerRefresh {
		a.current = s.newRefreshLocked()
		s.open.refreshes[a.current] = a
	}
	s.counts[EndpointAuthorizerRedeemed]++
	reply(w, map[string]any{
		"authorizer_access_token":  a.access.value,
		"expires_in":               int(s.opts.Lifetime / time.Second),
		"authorizer_refresh_token": a.current,
	})
}

// componentTokenLocked checks the component_access_token of a call, as
// WeChat does (40001, 40014, 42001), and the component_appid it is for.
func (s *Server) componentTokenLocked(w http.ResponseWriter, v, appID string, now time.Time) bool {
	code, msg := s.checkLocked(v, now)
	if code == 0 && s.tokens[v].kind != kindComponent {
		code, msg = 40001, "invalid credential, access_token is invalid or not latest"
	}
	switch {
	case code != 0:
		errReply(w, code, msg)
	case appID != s.opts.ComponentAppID:
		errReply(w, codeInvalidComp, "invalid component")
	default:
		return true
	}
	return false
}

// redeemableLocked returns the authorization whose current refresh token
// req redeems, or answers why not: 61003 if the account has not authorized
// the platform, 61023 for a refresh token that is unknown, of another
// account, of a replaced or revoked authorization, or retired (which
// revokes the authorization: its refresh tokens were redeemed twice).
func (s *Server) redeemableLocked(w http.ResponseWriter, req authorizerRequest) (*authorization, bool) {
	a := s.open.auths[authKey(req.ComponentAppID, req.AuthorizerAppID)]
	if a == nil {
		errReply(w, codeNotAuthorized, "component is not authorized by this account")
		return nil, false
	}
	if owner := s.open.refreshes[req.RefreshToken]; owner != a || a.revoked || req.RefreshToken != a.current {
		if owner == a && !a.revoked {
			a.revoked = true
			s.counts[EndpointAuthorizerRevoked]++
		}
		errReply(w, codeInvalidRefresh, "refresh_token is invalid")
		return nil, false
	}
	return a, true
}
