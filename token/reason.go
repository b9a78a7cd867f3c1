package token

// Why a Source fetches, as the Fetcher sees it.

import "context"

// Reason says why a Source fetches a new token. A Fetcher reads it with
// FetchReason, e.g. to use a costly forced refresh only when the upstream
// rejected the current token.
type Reason int

const (
	// ReasonMissing: there was no shared token (first use, expiry, lost data).
	ReasonMissing Reason = iota + 1
	// ReasonExpiring: the shared token entered its refresh-ahead window.
	ReasonExpiring
	// ReasonInvalidated: the shared token was reported invalid through
	// Invalidate.
	ReasonInvalidated
)

// String returns "missing", "expiring", "invalidated" or "unknown".
func (r Reason) String() string {
	switch r {
	case ReasonMissing:
		return "missing"
	case ReasonExpiring:
		return "expiring"
	case ReasonInvalidated:
		return "invalidated"
	}
	return "unknown"
}

type reasonKey struct{}

// FetchReason returns why the Source that called Fetch with ctx wants a new
// token, or 0 if ctx does not come from a Source.
func FetchReason(ctx context.Context) Reason {
	r, _ := ctx.Value(reasonKey{}).(Reason)
	return r
}
