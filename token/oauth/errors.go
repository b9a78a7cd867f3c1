package oauth

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/token"
)

// Grant names, as Error.Grant reports them.
const (
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
)

// MaxRetryAfter bounds a Retry-After from the token endpoint: a reply may
// not stop the cluster for longer.
const MaxRetryAfter = time.Hour

// Error is a failed request to the token endpoint.
type Error struct {
	// Grant is the grant requested: GrantClientCredentials or
	// GrantRefreshToken.
	Grant string
	// Status is the HTTP status, 0 if no reply came.
	Status int
	// Code is RFC 6749's error code ("invalid_grant"), bounded to 64
	// printable ASCII characters; "" if the reply had none.
	Code string
	// Wait is the reply's Retry-After, at most MaxRetryAfter.
	Wait time.Duration
	// err is the transport error, if no reply came.
	err error
}

// Error returns the grant, status and code; never the reply's body or
// description, which may echo what was sent.
func (e *Error) Error() string {
	switch {
	case e.err != nil:
		return fmt.Sprintf("oauth: %s grant: %v", e.Grant, e.err)
	case e.Code != "":
		return fmt.Sprintf("oauth: %s grant: HTTP %d: %s", e.Grant, e.Status, e.Code)
	}
	return fmt.Sprintf("oauth: %s grant: HTTP %d", e.Grant, e.Status)
}

// Unwrap returns the transport error, if any.
func (e *Error) Unwrap() error { return e.err }

// ErrorCode implements the code token.Classify records.
func (e *Error) ErrorCode() string { return e.Code }

// Permanent reports whether retrying cannot help: the client or grant is
// refused (RFC 6749 section 5.2). token.DefaultBackoffPolicy waits long.
func (e *Error) Permanent() bool {
	switch e.Code {
	case "invalid_client", "unauthorized_client", "invalid_grant", "invalid_scope", "unsupported_grant_type":
		return true
	}
	return false
}

// RetryAfter is how long the endpoint asked to be left alone (429, 503).
func (e *Error) RetryAfter() time.Duration { return e.Wait }

// Is makes a refused refresh token match token.ErrRefreshRevoked.
func (e *Error) Is(target error) bool {
	return target == token.ErrRefreshRevoked && e.Grant == GrantRefreshToken && e.Code == "invalid_grant"
}

// endpointError converts what x/oauth2 returned for grant.
func endpointError(grant string, err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return &Error{Grant: grant, err: err}
	}
	e := &Error{Grant: grant, Code: cleanCode(re.ErrorCode)}
	if re.Response != nil {
		e.Status = re.Response.StatusCode
		e.Wait = retryAfter(re.Response.Header.Get("Retry-After"), time.Now())
	}
	return e
}

// cleanCode bounds an error code that comes from outside.
func cleanCode(c string) string {
	if len(c) > 64 || strings.IndexFunc(c, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
		return ""
	}
	return c
}

// retryAfter parses a Retry-After header (seconds or an HTTP date),
// bounded to [0, MaxRetryAfter].
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseUint(h, 10, 32); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(h); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}
