package oauth

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"slices"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Name returns a credential name for cfg's tokens: "oauth2:" and a digest
// of its token URL, client ID, sorted scopes and endpoint parameters, so
// that clients and scope sets never share a token (and a name stays short
// and valid for any store). The client secret is not part of it: a rotated
// secret keeps the name, and token.Identity tells the secrets apart.
func Name(cfg *clientcredentials.Config) string {
	return digestName("oauth2:", cfg.TokenURL, cfg.ClientID, scopes(cfg.Scopes), cfg.EndpointParams.Encode())
}

// UserName returns a credential name for user's tokens from cfg:
// "oauth2:user:" and a digest of the token URL, client ID and user (any
// string: an ID, an e-mail address).
func UserName(cfg *oauth2.Config, user string) string {
	return digestName("oauth2:user:", cfg.Endpoint.TokenURL, cfg.ClientID, user)
}

// scopes is a canonical form of a scope set.
func scopes(s []string) string {
	s = slices.Clone(s)
	slices.Sort(s)
	return strings.Join(slices.Compact(s), " ")
}

func digestName(prefix string, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		// Escaped parts never hold NUL: no two tuples encode alike.
		h.Write([]byte(url.QueryEscape(p)))
		h.Write([]byte{0})
	}
	return prefix + hex.EncodeToString(h.Sum(nil)[:16])
}
