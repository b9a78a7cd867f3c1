package oauth

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/tokencache/tokencache/token"
)

// Invalidator is what Transport takes tokens from: a *token.Source.
type Invalidator interface {
	Source
	// Invalidate reports that the API rejected bad; it fetches nothing if
	// bad was already replaced.
	Invalidate(ctx context.Context, bad string) error
}

// Transport is an http.RoundTripper that sends each request with the
// cluster's bearer token. When the API rejects the token (401 with
// WWW-Authenticate: Bearer error="invalid_token", RFC 6750 section 3.1) it
// invalidates that token (compare-before-invalidate: a token another caller
// already replaced fetches nothing, so a storm of 401s costs one fetch) and
// sends the request once more with the new one. A request whose body cannot
// be replayed (a body without GetBody) is not sent again: its 401 is
// returned, and its token invalidated all the same.
type Transport struct {
	// Tokens supplies the token.
	Tokens Invalidator
	// Base defaults to http.DefaultTransport.
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	ctx := req.Context()
	tok, err := t.Tokens.Token(ctx)
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("oauth: token: %w", err)
	}
	resp, err := base.RoundTrip(authorized(req, req.Body, tok))
	if err != nil || !rejected(resp) {
		return resp, err
	}
	if !replayable(req) {
		// Not sent again, but the token is known bad: later requests
		// get a new one. Its 401 is the answer either way.
		_ = t.Tokens.Invalidate(ctx, tok.Value)
		return resp, nil
	}
	// The reply is discarded for the retry: drain a little of it so the
	// connection can be reused.
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
	if err := t.Tokens.Invalidate(ctx, tok.Value); err != nil {
		return nil, fmt.Errorf("oauth: invalidating a rejected token: %w", err)
	}
	if tok, err = t.Tokens.Token(ctx); err != nil {
		return nil, fmt.Errorf("oauth: token: %w", err)
	}
	body := req.Body
	if req.GetBody != nil {
		if body, err = req.GetBody(); err != nil {
			return nil, fmt.Errorf("oauth: replaying the request body: %w", err)
		}
	}
	return base.RoundTrip(authorized(req, body, tok))
}

// authorized is a copy of req with body and tok's Authorization header;
// req itself is not modified (http.RoundTripper's rule).
func authorized(req *http.Request, body io.ReadCloser, tok token.Token) *http.Request {
	r := req.Clone(req.Context())
	r.Body = body
	r.Header.Set("Authorization", "Bearer "+tok.Value)
	return r
}

func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// rejected reports whether resp says the bearer token is invalid.
func rejected(resp *http.Response) bool {
	if resp.StatusCode != http.StatusUnauthorized {
		return false
	}
	for _, h := range resp.Header.Values("WWW-Authenticate") {
		if bearerError(h) == "invalid_token" {
			return true
		}
	}
	return false
}

// bearerError returns the error parameter of a Bearer challenge in h, a
// list of challenges (RFC 6750 section 3; RFC 9110 section 11.6.1), or "".
func bearerError(h string) string {
	var scheme string
	for h != "" {
		var item string
		item, h = nextItem(h)
		name, rest := splitToken(strings.TrimSpace(item))
		if name == "" {
			continue
		}
		if rest = strings.TrimLeft(rest, " \t"); !strings.HasPrefix(rest, "=") {
			// A new challenge: its scheme, then its first parameter
			// or a token68.
			scheme = name
			if name, rest = splitToken(rest); name == "" {
				continue
			}
			if rest = strings.TrimLeft(rest, " \t"); !strings.HasPrefix(rest, "=") {
				continue
			}
		}
		if strings.EqualFold(scheme, "Bearer") && strings.EqualFold(name, "error") {
			return unquote(strings.TrimSpace(rest[1:]))
		}
	}
	return ""
}

// nextItem splits h at its first comma outside a quoted string.
func nextItem(h string) (item, rest string) {
	quoted := false
	for i := 0; i < len(h); i++ {
		switch c := h[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == ',':
			return h[:i], h[i+1:]
		}
	}
	return h, ""
}

// splitToken splits the token at the front of s (up to white space or
// "=") from the rest.
func splitToken(s string) (tok, rest string) {
	i := strings.IndexAny(s, " \t=")
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}

// unquote returns the value of a token or quoted-string.
func unquote(v string) string {
	if !strings.HasPrefix(v, `"`) {
		return v
	}
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		switch v[i] {
		case '\\':
			if i+1 < len(v) {
				i++
				b.WriteByte(v[i])
			}
		case '"':
			return b.String()
		default:
			b.WriteByte(v[i])
		}
	}
	return b.String()
}
