package wechat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/tokencache/tokencache/token"
)

// ErrBadReply is wrapped by every error about a reply that is not what the
// API documents: a non-200 status, a body that is not JSON or is too large, a
// missing token, an impossible expires_in. Nothing is cached from such a
// reply.
var ErrBadReply = errors.New("wechat: bad reply")

// Error is an error reply ({"errcode": N, "errmsg": "..."}) from the WeChat
// API. Use the predicates (IsInvalidToken, IsQuota, IsPermanent, IsTemporary)
// rather than codes where they fit.
type Error struct {
	// Op is the endpoint that answered, e.g. "cgi-bin/token".
	Op string
	// Code is the errcode.
	Code int
	// Msg is the errmsg (WeChat appends a request id, "rid: ...").
	Msg string
}

// Error returns the operation, errcode and errmsg. WeChat's errmsg holds no
// secret; the request URL, which does, is never part of it.
func (e *Error) Error() string {
	return fmt.Sprintf("wechat: %s: errcode %d: %s", e.Op, e.Code, e.Msg)
}

// Permanent reports whether retrying soon cannot help: wrong credentials or
// configuration (IsPermanent) or a spent quota (IsQuota). token.DefaultBackoffPolicy
// then makes the whole cluster wait long before it calls WeChat again.
func (e *Error) Permanent() bool { return IsPermanent(e) || IsQuota(e) }

// ErrorCode returns the errcode, which token.Classify shares with every
// instance through the backoff record (the message is not shared).
func (e *Error) ErrorCode() string { return strconv.Itoa(e.Code) }

// Is reports whether e matches target: an errcode that refuses an Open
// Platform authorization (61023, 61003; see IsRefreshRevoked) matches
// token.ErrRefreshRevoked, so that a token.Source treats it as refused
// refresh state, and every instance learns it through the backoff record.
func (e *Error) Is(target error) bool {
	return target == token.ErrRefreshRevoked && isRefreshRevokedCode(e.Code)
}

// Error codes with a meaning for token handling. See
// https://developers.weixin.qq.com/doc/offiaccount/Getting_Started/Global_Return_Code.html
const (
	CodeBusy              = -1    // system busy, try again
	CodeInvalidCredential = 40001 // access_token invalid or not the latest
	CodeInvalidAppSecret  = 40125 // wrong AppSecret
	CodeInvalidAppID      = 40013 // wrong AppID
	CodeInvalidToken      = 40014 // malformed access_token
	CodeTokenExpired      = 42001 // access_token expired
	CodeDailyQuota        = 45009 // daily API quota reached
	CodeQuotaLimit        = 45011 // API call too frequent
	CodeIPNotWhitelisted  = 40164 // caller's IP not in the whitelist
	CodeInvalidSecretRule = 40243 // AppSecret frozen

	// Open Platform (第三方平台). See
	// https://developers.weixin.qq.com/doc/oplatform/Return_codes/Return_code_descriptions_new.html
	CodeNotAuthorized        = 61003 // the account has not authorized the platform, or revoked it
	CodeComponentIPNotListed = 61004 // caller's IP not in the platform's whitelist
	CodeTicketExpired        = 61005 // component_verify_ticket expired: use the latest one pushed
	CodeTicketInvalid        = 61006 // component_verify_ticket invalid: use the latest one pushed
	CodeInvalidComponent     = 61011 // not a third-party platform's AppID
	CodeRefreshTokenInvalid  = 61023 // authorizer_refresh_token invalid: lost, wrong, or authorization renewed
)

// IsInvalidToken reports whether err says the access token used was invalid,
// expired or not the latest (40001, 40014, 42001): invalidate it and retry.
func IsInvalidToken(err error) bool {
	var e *Error
	return errors.As(err, &e) && isInvalidTokenCode(e.Code)
}

// isInvalidTokenCode is the one list of errcodes that reject an access token.
func isInvalidTokenCode(code int) bool {
	return code == CodeInvalidCredential || code == CodeInvalidToken || code == CodeTokenExpired
}

// IsQuota reports whether err is a quota or frequency limit (45009, 45011).
func IsQuota(err error) bool { return hasCode(err, CodeDailyQuota, CodeQuotaLimit) }

// IsPermanent reports whether err is a credential or configuration problem
// that retrying cannot fix: wrong AppID or AppSecret, IP not whitelisted,
// frozen secret, API disabled for the account, not a third-party platform,
// or an authorization refused (IsRefreshRevoked).
func IsPermanent(err error) bool {
	return IsRefreshRevoked(err) || hasCode(err, CodeInvalidAppID, CodeInvalidAppSecret, CodeIPNotWhitelisted,
		CodeInvalidSecretRule, CodeComponentIPNotListed, CodeInvalidComponent, 89503, 89506, 89507)
}

// IsRefreshRevoked reports whether err says that an authorizer's
// authorization is gone: the authorizer_refresh_token was refused (61023:
// lost and replaced by a guess, from an authorization since renewed, or
// redeemed after WeChat replaced it) or the account has not authorized the
// platform (61003: never, or it revoked the authorization). Only a new
// authorization, or the current refresh token fetched with
// api_get_authorizer_list, ends it (token.Source.SeedRefresh). Such an error
// also matches token.ErrRefreshRevoked.
func IsRefreshRevoked(err error) bool {
	var e *Error
	return errors.As(err, &e) && isRefreshRevokedCode(e.Code)
}

func isRefreshRevokedCode(code int) bool {
	return code == CodeRefreshTokenInvalid || code == CodeNotAuthorized
}

// IsTemporary reports whether err is worth retrying later: errcode -1
// (system busy), an HTTP 5xx status, or a network timeout.
func IsTemporary(err error) bool {
	if hasCode(err, CodeBusy) {
		return true
	}
	var se *statusError
	if errors.As(err, &se) && se.code >= 500 {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

func hasCode(err error, codes ...int) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	for _, c := range codes {
		if e.Code == c {
			return true
		}
	}
	return false
}

// statusError is a non-200 HTTP status.
type statusError struct {
	op   string
	code int
}

func (e *statusError) Error() string {
	return fmt.Sprintf("wechat: %s: HTTP status %d", e.op, e.code)
}

func (e *statusError) Unwrap() error { return ErrBadReply }

// redactURL hides the secret and shortens tokens in a URL that goes into an
// error: Go's *url.Error prints the whole URL, secret= included.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "[unparsable URL]"
	}
	q := u.Query()
	for _, k := range []string{"secret", "appsecret"} {
		if q.Has(k) {
			q.Set(k, "REDACTED")
		}
	}
	for _, k := range []string{"access_token", "ticket", "component_access_token"} {
		if q.Has(k) {
			q.Set(k, token.Redact(q.Get(k)))
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// redactErr makes a transport error safe to return: the URL in a *url.Error
// is redacted, and the secret is replaced wherever else it appears.
func redactErr(err error, secret string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redactURL(ue.URL)
	}
	if secret != "" && strings.Contains(err.Error(), secret) {
		return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), secret, "REDACTED"))
	}
	return err
}
