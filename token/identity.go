package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
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
// refused with ErrIdentityMismatch while it lives, and never fetched over;
// once it is gone, a fetch may claim the name for its own account. A shared
// backoff applies only to Sources whose Account and Secret both match the
// Fetcher's that failed, so a fixed secret is not held back by the wrong
// one's backoff.
type Identity struct {
	// Account names the upstream account, e.g. "wechat:" + AppID.
	Account string
	// Secret is what authenticates the fetch, e.g. the AppSecret.
	Secret []byte
}

// An Identifier is a Fetcher that knows its Identity. A Fetcher that is not
// an Identifier has none, and no check is made.
type Identifier interface {
	// Identity returns the account and secret the Fetcher fetches with.
	Identity() Identity
}

// ErrIdentityMismatch is wrapped by the error Token returns when the shared
// store holds a live token fetched for another Account under the same
// credential name: two applications are configured with one name. Give each
// its own name. (Moving a name to another account works by itself once the
// old account's token has expired.)
var ErrIdentityMismatch = errors.New("token: the shared token belongs to another account")

// accountKey keys the account fingerprint. It is public: an account name
// (an AppID, a client ID) is no secret, and a fixed key keeps the
// fingerprint stable whatever IdentityKey is set to.
var accountKey = []byte("tokencache account fingerprint v1")

// fingerprints returns the keyed fingerprints of f's identity: of its
// account alone (32 hex digits), and of account and secret. The latter is
// keyed with Options.IdentityKey; without one it is cut to 8 hex digits
// (32 bits), enough to tell a corrected secret from a wrong one, too few to
// confirm a guess of a random secret. Both are "" if f has no identity.
func fingerprints(f Fetcher, key []byte) (account, fetcher string, err error) {
	id, ok := f.(Identifier)
	if !ok {
		return "", "", nil
	}
	defer func() {
		if p := recover(); p != nil {
			account, fetcher, err = "", "", fmt.Errorf("Identity panicked (%T)", p)
		}
	}()
	i := id.Identity()
	account = mac(accountKey, []byte("account"), []byte(i.Account))
	if len(key) == 0 {
		return account, mac(accountKey, []byte("fetcher"), []byte(i.Account), i.Secret)[:8], nil
	}
	return account, mac(key, []byte("fetcher"), []byte(i.Account), i.Secret), nil
}

// mac is the HMAC-SHA256 of the length-prefixed parts (so that no two
// inputs run together), 16 bytes in hex.
func mac(key []byte, parts ...[]byte) string {
	h := hmac.New(sha256.New, key)
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// WithIdentity returns a Fetcher that fetches with f and has identity id,
// for a Fetcher (such as a FetcherFunc) that does not implement Identifier.
func WithIdentity(f Fetcher, id Identity) Fetcher {
	return identified{f, id}
}

type identified struct {
	Fetcher
	id Identity
}

func (i identified) Identity() Identity { return i.id }

// checkIdentity refuses a credential whose last token was saved for another
// account, warning at most once a minute.
func (s *Source) checkIdentity(f Fence) error {
	if f.Identity == "" || s.accountFP == "" || f.Identity == s.accountFP {
		return nil
	}
	now := time.Now().UnixNano()
	if last := s.warn.mismatched.Load(); now-last >= int64(time.Minute) && s.warn.mismatched.CompareAndSwap(last, now) {
		s.log.Error("tokencache: the shared token was fetched for another account: two applications use one credential name; nothing is fetched")
	}
	return fmt.Errorf("token: %s: %w", s.name, ErrIdentityMismatch)
}
