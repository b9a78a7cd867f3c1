package wechat

// WeChat Open Platform (第三方平台): a third-party platform (the
// "component") calls the API on behalf of the accounts that authorized it,
// with one authorizer_access_token per account.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/tokencache/tokencache/token"
)

// Operations, as they appear in errors.
const (
	opComponentToken  = "cgi-bin/component/api_component_token"
	opAuthorizerToken = "cgi-bin/component/api_authorizer_token"
)

// ComponentTokenFetcher fetches a third-party platform's
// component_access_token:
//
//	POST /cgi-bin/component/api_component_token
//	     {"component_appid":...,"component_appsecret":...,"component_verify_ticket":...}
//
// The component_verify_ticket is pushed by WeChat to the platform's
// authorization event URL every 10 minutes and lasts 12 hours: store the
// latest one where VerifyTicket can read it (WeChat advises using the last
// one received if a push is missed). Use the fetcher behind a token.Source,
// whose token AuthorizerFetcher.Component then supplies.
type ComponentTokenFetcher struct {
	// ComponentAppID and Secret are the third-party platform's credentials.
	ComponentAppID, Secret string
	// VerifyTicket returns the latest component_verify_ticket received.
	VerifyTicket func(ctx context.Context) (string, error)
	// BaseURL defaults to DefaultBaseURL.
	BaseURL string
	// HTTPClient defaults to http.DefaultClient.
	HTTPClient *http.Client
}

// Fetch implements token.Fetcher.
func (f *ComponentTokenFetcher) Fetch(ctx context.Context) (token.Token, error) {
	if f.VerifyTicket == nil {
		return token.Token{}, fmt.Errorf("wechat: %s: no VerifyTicket: %w", opComponentToken, token.ErrInvalidConfig)
	}
	ticket, err := f.VerifyTicket(ctx)
	if err != nil {
		return token.Token{}, fmt.Errorf("wechat: %s: component_verify_ticket: %w", opComponentToken, err)
	}
	if ticket == "" {
		return token.Token{}, fmt.Errorf("wechat: %s: no component_verify_ticket received yet", opComponentToken)
	}
	body, _ := json.Marshal(map[string]string{
		"component_appid": f.ComponentAppID, "component_appsecret": f.Secret, "component_verify_ticket": ticket,
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base(f.BaseURL)+"/"+opComponentToken, bytes.NewReader(body))
	if err != nil {
		return token.Token{}, redactErr(err, f.Secret)
	}
	req.Header.Set("Content-Type", "application/json")
	return fetchToken(client(f.HTTPClient), req, opComponentToken, f.Secret, "component_access_token")
}

// Identity implements token.Identifier: one platform's component tokens are
// shared, whichever secret fetched them.
func (f *ComponentTokenFetcher) Identity() token.Identity {
	return token.Identity{Account: "wechat-component:" + f.ComponentAppID, Secret: []byte(f.Secret)}
}

// AuthorizerFetcher is the token.Redeemer of an authorizer_access_token:
// the token a third-party platform calls the API with on behalf of an
// account (official account or mini program) that authorized it. It
// redeems the account's authorizer_refresh_token:
//
//	POST /cgi-bin/component/api_authorizer_token?component_access_token=COMPONENT_ACCESS_TOKEN
//	     {"component_appid":...,"authorizer_appid":...,"authorizer_refresh_token":...}
//	  -> {"authorizer_access_token":...,"expires_in":7200,"authorizer_refresh_token":...}
//
// The first refresh token comes with the authorization: the authorization
// callback's auth_code, exchanged with api_query_auth, returns it in
// authorization_info.authorizer_refresh_token; give it to the Source with
// token.Source.SeedRefresh. (api_get_authorizer_list returns the current one
// of every authorized account, should it ever be lost.) WeChat documents
// that it does not expire while the authorization stands and returns it
// unchanged; should a redemption return another one, the Source stores it
// durably before the access token is shared, and redeems it next time.
//
// A refresh token WeChat refuses (61023), or an authorization that is gone
// (61003), gives an error that matches token.ErrRefreshRevoked: the Source
// backs off until SeedRefresh of a new authorization. If WeChat rejects the
// component_access_token (40001, 40014, 42001), the fetcher invalidates it
// and tries once more with the new one.
//
// The refresh token travels in the request body only; no error holds it,
// nor any token in full.
type AuthorizerFetcher struct {
	// Component supplies the platform's component_access_token: a
	// token.Source of a ComponentTokenFetcher.
	Component TokenSource
	// ComponentAppID is the third-party platform's AppID.
	ComponentAppID string
	// AuthorizerAppID is the AppID of the account that authorized it.
	AuthorizerAppID string
	// BaseURL defaults to DefaultBaseURL.
	BaseURL string
	// HTTPClient defaults to http.DefaultClient.
	HTTPClient *http.Client
}

var _ token.Redeemer = (*AuthorizerFetcher)(nil)

// Fetch implements token.Fetcher. An authorizer_access_token is only ever
// obtained by redeeming a refresh token: Fetch fails with an error wrapping
// token.ErrNoRefreshState; a token.Source calls Redeem.
func (f *AuthorizerFetcher) Fetch(context.Context) (token.Token, error) {
	return token.Token{}, fmt.Errorf("wechat: %s: an authorizer_access_token needs a refresh token (use a token.Source): %w",
		opAuthorizerToken, token.ErrNoRefreshState)
}

// Redeem implements token.Redeemer: it redeems refresh for a new
// authorizer_access_token, and returns the refresh token WeChat returned if
// it differs from refresh ("" if it is the same, or none was returned).
func (f *AuthorizerFetcher) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	if f.Component == nil {
		return token.Token{}, "", fmt.Errorf("wechat: %s: no Component token source: %w", opAuthorizerToken, token.ErrInvalidConfig)
	}
	if refresh == "" {
		return token.Token{}, "", fmt.Errorf("wechat: %s: empty refresh token: %w", opAuthorizerToken, token.ErrNoRefreshState)
	}
	body, _ := json.Marshal(map[string]string{
		"component_appid": f.ComponentAppID, "authorizer_appid": f.AuthorizerAppID, "authorizer_refresh_token": refresh,
	})
	for attempt := 0; ; attempt++ {
		ct, err := f.Component.Token(ctx)
		if err != nil {
			return token.Token{}, "", fmt.Errorf("wechat: %s: component_access_token: %w", opAuthorizerToken, err)
		}
		tok, next, err := f.redeem(ctx, ct.Value, body, refresh)
		if attempt == 0 && IsInvalidToken(err) {
			if ierr := f.Component.Invalidate(ctx, ct.Value); ierr != nil {
				return token.Token{}, "", fmt.Errorf("%w (and invalidating the component_access_token: %v)", err, ierr)
			}
			continue
		}
		return tok, next, err
	}
}

// redeem sends one redemption with the component token ct.
func (f *AuthorizerFetcher) redeem(ctx context.Context, ct string, body []byte, refresh string) (token.Token, string, error) {
	q := url.Values{"component_access_token": {ct}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base(f.BaseURL)+"/"+opAuthorizerToken+"?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		return token.Token{}, "", redactErr(err, refresh)
	}
	req.Header.Set("Content-Type", "application/json")
	sent := time.Now()
	var reply json.RawMessage
	// refresh is the secret: it never appears in what call returns.
	if err := call(client(f.HTTPClient), req, opAuthorizerToken, refresh, &reply); err != nil {
		return token.Token{}, "", err
	}
	return parseAuthorizerReply(opAuthorizerToken, reply, refresh, sent)
}

// parseAuthorizerReply reads a redemption's reply whose errcode, if any, is
// 0: the access token, and the refresh token, "" if it is refresh or absent.
// A refresh token that is not a string or longer than token.MaxTokenLen is
// refused, with the access token: it could not be stored.
func parseAuthorizerReply(op string, body []byte, refresh string, sent time.Time) (token.Token, string, error) {
	tok, err := parseTokenReply(op, body, "authorizer_access_token", sent)
	var r struct {
		Next *string `json:"authorizer_refresh_token"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return token.Token{}, "", fmt.Errorf("wechat: %s: authorizer_refresh_token is not a string: %w", op, ErrBadReply)
		}
		return token.Token{}, "", fmt.Errorf("wechat: %s: reply is not a JSON object (%d bytes): %w", op, len(body), ErrBadReply)
	}
	switch {
	case r.Next == nil || *r.Next == "" || *r.Next == refresh:
		return tok, "", err
	case len(*r.Next) > token.MaxTokenLen:
		return token.Token{}, "", fmt.Errorf("wechat: %s: authorizer_refresh_token of %d bytes, longer than token.MaxTokenLen: %w",
			op, len(*r.Next), ErrBadReply)
	case err != nil:
		// WeChat replaced the refresh token even if the access token is
		// of no use: the Source commits it (see token.Redeemer).
		return token.Token{}, *r.Next, err
	}
	return tok, *r.Next, nil
}

// Identity implements token.Identifier: the account is the pair of platform
// and authorizer, so that a credential name holding another pair's token
// (or the authorizer's own access_token, which is not interchangeable with
// one granted to a platform) is refused. There is no secret to tell apart:
// the refresh token is shared state, not configuration.
func (f *AuthorizerFetcher) Identity() token.Identity {
	return token.Identity{Account: "wechat-authorizer:" + f.ComponentAppID + "/" + f.AuthorizerAppID}
}
