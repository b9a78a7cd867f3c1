package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// Identity says which upstream account a Fetcher fetches for, and with which
// secret. A Source records a keyed fingerprint of it in the shared store,
// never the values themselves.
//
// Tokens of one Account are interchangeable: a Source adopts a token that
// another instance fetched for the same Account, whatever its secret, so
// that a rolling secret rotation (old and new secret side by side) shares one
// token and never refetches in turn; when the upstream rejects a token after
// the old secret was revoked, Invalidate and a fetch with the new secret
// follow. A token of another Account under the same credential name is
// refused with ErrIdentityMismatch, and never fetched over. A shared backoff
// applies only to Sources whose Account and Secret both match the Fetcher's
// that failed, so a fixed secret is not held back by the wrong one's
// backoff.
type Identity struct {
	// Account names the upstream account, e.g. "wechat:" + AppID.
	Account string
	// Secret is what authenticates the fetch, e.g. the AppSecret.
	Secret []byte
}

// An Identifier is a Fetcher that knows its Identity. A Fetcher that is not
// an Identifier has none, and no check is made.
type Identifier interface {
	Identity() Identity
}

// ErrIdentityMismatch is wrapped by the error Token returns when the shared
// store holds a token fetched for another Account under the same credential
// name: two applications are configured with one name. Give each its own
// name, or delete the credential's keys when moving a name to another
// account.
var ErrIdentityMismatch = errors.New("token: the shared token belongs to another account")

// defaultIdentityKey keys the fingerprints when Options.IdentityKey is unset.
// It is public, so a fingerprint is then as hard to reverse as the secret is
// to guess: fine for random secrets (a WeChat AppSecret, an OAuth client
// secret), not for a password.
var defaultIdentityKey = []byte("tokencache identity fingerprint v1")

// fingerprints returns the keyed fingerprints of f's identity: of its
// account alone, and of account and secret. Both are "" if f has none.
func fingerprints(f Fetcher, key []byte) (account, fetcher string) {
	id, ok := f.(Identifier)
	if !ok {
		return "", ""
	}
	i := id.Identity()
	if len(key) == 0 {
		key = defaultIdentityKey
	}
	mac := func(parts ...[]byte) string {
		h := hmac.New(sha256.New, key)
		for _, p := range parts {
			// Length-prefixed, so that no two inputs run together.
			fmt.Fprintf(h, "%d:", len(p))
			h.Write(p)
		}
		return hex.EncodeToString(h.Sum(nil)[:16])
	}
	return mac([]byte("account"), []byte(i.Account)), mac([]byte("fetcher"), []byte(i.Account), i.Secret)
}
