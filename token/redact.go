package token

import (
	"log/slog"
	"regexp"
)

// urlQuery matches a URL's query string (and fragment): where fetchers'
// errors most often carry a secret, e.g. "...?appid=x&secret=y" in a
// *url.Error.
var urlQuery = regexp.MustCompile(`(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#"'<>]*)[?#][^\s"'<>]*`)

// RedactURLs returns s with the query string of every URL in it replaced by
// "?REDACTED". A Source logs errors through it; it cannot know every way a
// Fetcher might put a secret in an error, so a Fetcher must still keep
// secrets out of its errors.
func RedactURLs(s string) string {
	return urlQuery.ReplaceAllString(s, "$1?REDACTED")
}

// errAttr is how a Source logs an error: its message, with URL query
// strings redacted.
func errAttr(err error) slog.Attr {
	if err == nil {
		return slog.String("error", "<nil>")
	}
	return slog.String("error", RedactURLs(err.Error()))
}

// redactedError shows its error with URL query strings redacted: a
// Fetcher's error goes to callers, who log it. errors.Is and errors.As see
// the original.
type redactedError struct{ err error }

func (e redactedError) Error() string { return RedactURLs(e.err.Error()) }
func (e redactedError) Unwrap() error { return e.err }

// redactErr wraps err, if any, in a redactedError.
func redactErr(err error) error {
	if err == nil {
		return nil
	}
	return redactedError{err}
}
