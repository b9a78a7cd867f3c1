// Package wechat fetches WeChat official-account credentials (access_token,
// stable access_token, jsapi_ticket) and Open Platform ones
// (component_access_token, and authorizer_access_token redeemed with a
// refresh token: authorizer.go) for a token.Source, and calls the API with
// the shared token through a Transport that invalidates and retries once
// when WeChat rejects it.
//
// The AppSecret never appears in an error or a log line, and tokens in
// messages are shortened (see token.Redact).
package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokencache/tokencache/token"
)

// DefaultBaseURL is the WeChat API. Regional hosts (api2.weixin.qq.com,
// sh.api.weixin.qq.com, ...) and proxies go in a fetcher's BaseURL.
const DefaultBaseURL = "https://api.weixin.qq.com"

// maxReply bounds the replies read: WeChat's token replies are a few hundred
// bytes.
const maxReply = 64 << 10

// maxExpiresIn rejects absurd lifetimes; WeChat's are at most 7200 s.
const maxExpiresIn = 24 * 60 * 60

// TokenFetcher fetches the classic access_token:
//
//	GET /cgi-bin/token?grant_type=client_credential&appid=APPID&secret=APPSECRET
//
// Each fetch invalidates the previous token (WeChat keeps it alive for about
// five minutes) and counts against a quota of 2000 a day: use it only behind
// a token.Source.
type TokenFetcher struct {
	// AppID and Secret are the official account's credentials.
	AppID, Secret string
	// BaseURL defaults to DefaultBaseURL.
	BaseURL string
	// HTTPClient defaults to http.DefaultClient.
	HTTPClient *http.Client
}

// Fetch implements token.Fetcher.
func (f *TokenFetcher) Fetch(ctx context.Context) (token.Token, error) {
	q := url.Values{"grant_type": {"client_credential"}, "appid": {f.AppID}, "secret": {f.Secret}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base(f.BaseURL)+"/cgi-bin/token?"+q.Encode(), nil)
	if err != nil {
		return token.Token{}, redactErr(err, f.Secret)
	}
	return fetchToken(client(f.HTTPClient), req, "cgi-bin/token", f.Secret, "access_token")
}

// StableTokenFetcher fetches the stable access_token:
//
//	POST /cgi-bin/stable_token {"grant_type":"client_credential","appid":...,"secret":...,"force_refresh":false}
//
// In normal mode WeChat returns the same token while it is valid, so a
// routine refresh never invalidates anything. Force refresh invalidates the
// token and is limited to 20 a day, 30 s apart: the fetcher uses it only
// when the Source refreshes because the current token was reported invalid
// (token.ReasonInvalidated) and Force allows it.
type StableTokenFetcher struct {
	// AppID and Secret are the official account's credentials.
	AppID, Secret string
	// Force, if set, rations force_refresh across all instances (e.g. a
	// rediscache.Limiter with ForceRefreshPerDay and ForceRefreshInterval).
	// Nil means never force.
	Force Limiter
	// BaseURL defaults to DefaultBaseURL.
	BaseURL string
	// HTTPClient defaults to http.DefaultClient.
	HTTPClient *http.Client
}

// Limits of the stable token's force_refresh (20 a day, 30 s apart; the
// interval has a second of margin, since WeChat's clock is not ours and a
// force refresh too soon is silently ignored), and the time zone WeChat
// counts days in.
const (
	ForceRefreshPerDay   = 20
	ForceRefreshInterval = 31 * time.Second
	DayOffset            = 8 * time.Hour // UTC+8
)

// A Limiter rations an action across every instance. Allow reports whether
// the action may run now and, if so, counts it.
type Limiter interface {
	// Allow reports whether the action may run now and, if so, counts it.
	Allow(ctx context.Context) (bool, error)
}

// Fetch implements token.Fetcher.
func (f *StableTokenFetcher) Fetch(ctx context.Context) (token.Token, error) {
	force := false
	if f.Force != nil && token.FetchReason(ctx) == token.ReasonInvalidated {
		ok, err := f.Force.Allow(ctx)
		if err != nil {
			return token.Token{}, fmt.Errorf("wechat: stable_token: force_refresh limiter: %w", err)
		}
		force = ok
	}
	body, _ := json.Marshal(map[string]any{
		"grant_type": "client_credential", "appid": f.AppID, "secret": f.Secret, "force_refresh": force,
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base(f.BaseURL)+"/cgi-bin/stable_token", bytes.NewReader(body))
	if err != nil {
		return token.Token{}, redactErr(err, f.Secret)
	}
	req.Header.Set("Content-Type", "application/json")
	return fetchToken(client(f.HTTPClient), req, "cgi-bin/stable_token", f.Secret, "access_token")
}

// fetchToken sends req and reads {"<field>": "...", "expires_in": N}.
// ExpiresAt counts from the moment the request was sent.
func fetchToken(hc *http.Client, req *http.Request, op, secret, field string) (token.Token, error) {
	sent := time.Now()
	var body json.RawMessage
	if err := call(hc, req, op, secret, &body); err != nil {
		return token.Token{}, err
	}
	return parseTokenReply(op, body, field, sent)
}

// parseTokenReply reads a token reply whose errcode, if any, is 0.
func parseTokenReply(op string, body []byte, field string, sent time.Time) (token.Token, error) {
	var reply map[string]json.RawMessage
	if err := json.Unmarshal(body, &reply); err != nil {
		return token.Token{}, fmt.Errorf("wechat: %s: reply is not a JSON object (%d bytes): %w", op, len(body), ErrBadReply)
	}
	var value string
	var expiresIn int64
	if err := json.Unmarshal(reply[field], &value); err != nil || value == "" {
		return token.Token{}, fmt.Errorf("wechat: %s: no %s in the reply: %w", op, field, ErrBadReply)
	}
	if err := json.Unmarshal(reply["expires_in"], &expiresIn); err != nil || expiresIn <= 0 || expiresIn > maxExpiresIn {
		return token.Token{}, fmt.Errorf("wechat: %s: expires_in out of range: %w", op, ErrBadReply)
	}
	return token.Token{Value: value, ExpiresAt: sent.Add(time.Duration(expiresIn) * time.Second)}, nil
}

// call sends req and decodes a successful JSON reply into out. Every error is
// free of the secret.
func call(hc *http.Client, req *http.Request, op, secret string, out any) error {
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("wechat: %s: %w", op, redactErr(err, secret))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return fmt.Errorf("wechat: %s: reading the reply: %w", op, redactErr(err, secret))
	}
	if resp.StatusCode != http.StatusOK {
		return &statusError{op: op, code: resp.StatusCode}
	}
	if len(body) > maxReply {
		return fmt.Errorf("wechat: %s: reply larger than %d bytes: %w", op, maxReply, ErrBadReply)
	}
	if err := apiError(op, body, secret); err != nil {
		return err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("wechat: %s: reply is not JSON (%d bytes): %w", op, len(body), ErrBadReply)
	}
	return nil
}

// apiError returns the *Error in a JSON reply with a non-zero errcode, an
// error wrapping ErrBadReply for a body that is not JSON, or nil.
func apiError(op string, body []byte, secret string) error {
	var e struct {
		ErrCode *int   `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return fmt.Errorf("wechat: %s: reply is not JSON (%d bytes): %w", op, len(body), ErrBadReply)
	}
	if e.ErrCode == nil || *e.ErrCode == 0 {
		return nil
	}
	msg := e.ErrMsg
	if secret != "" {
		msg = strings.ReplaceAll(msg, secret, "REDACTED")
	}
	return &Error{Op: op, Code: *e.ErrCode, Msg: msg}
}

func base(u string) string {
	if u == "" {
		return DefaultBaseURL
	}
	return strings.TrimRight(u, "/")
}

func client(c *http.Client) *http.Client {
	if c == nil {
		return http.DefaultClient
	}
	return c
}

// Identity implements token.Identifier: tokens of one AppID are shared,
// whichever secret fetched them (a rolling secret rotation shares one
// token), and a credential name holding another AppID's token is refused.
func (f *TokenFetcher) Identity() token.Identity {
	return token.Identity{Account: "wechat:" + f.AppID, Secret: []byte(f.Secret)}
}

// Identity implements token.Identifier, as TokenFetcher's does: the classic
// and the stable token of one AppID are the same credential.
func (f *StableTokenFetcher) Identity() token.Identity {
	return token.Identity{Account: "wechat:" + f.AppID, Secret: []byte(f.Secret)}
}
