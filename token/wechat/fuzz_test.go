package wechat

import (
	"errors"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
)

// FuzzParseReply feeds arbitrary bodies to the reply parsers: they never
// panic, every failure is a *Error or wraps ErrBadReply, and a success is a
// non-empty token with a sane lifetime (and, for an authorizer's, a next
// refresh token that is new and short enough to store).
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		`{"access_token":"ACCESS_TOKEN","expires_in":7200}`,
		`{"errcode":40013,"errmsg":"invalid appid"}`,
		`{"errcode":0,"errmsg":"ok","ticket":"T","expires_in":7200}`,
		`{"access_token":"","expires_in":7200}`,
		`{"access_token":"x","expires_in":-1}`,
		`<html>502</html>`,
		`{"errcode":"40001"}`,
		`[]`,
		`{"authorizer_access_token":"A","expires_in":7200,"authorizer_refresh_token":"refreshtoken@@@next"}`,
		`{"authorizer_access_token":"A","expires_in":7200,"authorizer_refresh_token":"RT"}`,
		`{"authorizer_access_token":"A","expires_in":7200,"authorizer_refresh_token":7}`,
		`{"authorizer_access_token":"A","expires_in":7200,"authorizer_refresh_token":null}`,
		`{"errcode":61023,"errmsg":"refresh_token is invalid"}`,
	} {
		f.Add([]byte(s))
	}
	sent := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, body []byte) {
		if err := apiError("op", body, "secret"); err != nil {
			var e *Error
			if !errors.As(err, &e) && !errors.Is(err, ErrBadReply) {
				t.Fatalf("apiError: untyped error %v", err)
			}
			return
		}
		for _, field := range []string{"access_token", "ticket"} {
			tok, err := parseTokenReply("op", body, field, sent)
			if err != nil {
				if !errors.Is(err, ErrBadReply) {
					t.Fatalf("parseTokenReply: untyped error %v", err)
				}
				continue
			}
			if tok.Value == "" || !tok.ExpiresAt.After(sent) || tok.ExpiresAt.Sub(sent) > maxExpiresIn*time.Second {
				t.Fatalf("parseTokenReply accepted %q: %v", body, tok)
			}
		}
		tok, next, err := parseAuthorizerReply("op", body, "RT", sent)
		if err != nil {
			if !errors.Is(err, ErrBadReply) {
				t.Fatalf("parseAuthorizerReply: untyped error %v", err)
			}
			return
		}
		if tok.Value == "" || !tok.ExpiresAt.After(sent) || next == "RT" || len(next) > token.MaxTokenLen {
			t.Fatalf("parseAuthorizerReply accepted %q: %v, next of %d bytes", body, tok, len(next))
		}
	})
}
