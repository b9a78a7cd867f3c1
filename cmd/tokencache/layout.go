package main

// What rediscache stores and publishes, read without its unexported code:
// key names, the clear header of a stored token, event payloads. Kept in
// step with rediscache by the tests, which write everything through the
// library.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"github.com/tokencache/tokencache/rediscache"
)

// keySuffixes are the keys a credential may have besides its limiters
// (":limit:<action>").
var keySuffixes = []string{"token", "lock", "fence", "backoff", "order", "refresh"}

func tag(prefix, name string) string { return "{" + prefix + name + "}" }

// checkName refuses what rediscache refuses as a credential name.
func checkName(name string) error {
	if name == "" || len(name) > rediscache.MaxNameLen {
		return fmt.Errorf("%w: length %d (want 1 to %d)", rediscache.ErrInvalidName, len(name), rediscache.MaxNameLen)
	}
	for _, r := range name {
		if r == '{' || r == '}' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("%w: %q holds %q", rediscache.ErrInvalidName, name, r)
		}
	}
	return nil
}

// checkPrefix refuses what rediscache.New refuses as a prefix.
func checkPrefix(prefix string) error {
	if strings.ContainsAny(prefix, "{} \t\r\n") {
		return fmt.Errorf("%w: prefix %q holds braces or white space", rediscache.ErrInvalidName, prefix)
	}
	return nil
}

// splitKey returns the credential name and the key's kind ("token",
// "limit:<action>", ...) of one of the prefix's keys.
func splitKey(prefix, key string) (name, kind string, ok bool) {
	rest, ok := strings.CutPrefix(key, "{"+prefix)
	if !ok {
		return "", "", false
	}
	name, kind, ok = strings.Cut(rest, "}:")
	if !ok || checkName(name) != nil {
		return "", "", false
	}
	if action, isLimit := strings.CutPrefix(kind, "limit:"); isLimit {
		if checkName(action) != nil {
			return "", "", false
		}
		return name, kind, true
	}
	for _, s := range keySuffixes {
		if kind == s {
			return name, kind, true
		}
	}
	return "", "", false
}

// header is the clear part of a stored token: "1|<version>|<lifetime
// ms>|<token>" or, sealed, "e|<version>|<lifetime ms>|<key id>|<sealed>".
type header struct {
	sealed     bool
	version    int64
	lifetimeMS int64
	keyID      string // sealed only
	secret     string // the token (or the sealed blob): never printed
}

// maxKeyIDLen bounds a key ID that is printed (rediscache allows 64).
const maxKeyIDLen = 64

// parseHeader reads a stored value's header; it never puts the value in
// its error.
func parseHeader(v string) (header, error) {
	f := strings.SplitN(v, "|", 4)
	if len(f) != 4 || (f[0] != "1" && f[0] != "e") {
		return header{}, fmt.Errorf("malformed: not rediscache's layout (%d bytes)", len(v))
	}
	var h header
	var err1, err2 error
	h.version, err1 = strconv.ParseInt(f[1], 10, 64)
	h.lifetimeMS, err2 = strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || h.version <= 0 || h.lifetimeMS <= 0 {
		return header{}, fmt.Errorf("malformed: bad version or lifetime field (%d bytes)", len(v))
	}
	h.sealed, h.secret = f[0] == "e", f[3]
	if h.sealed {
		id, _, ok := strings.Cut(f[3], "|")
		if !ok || id == "" || len(id) > maxKeyIDLen || strings.IndexFunc(id, notKeyIDRune) >= 0 {
			return header{}, fmt.Errorf("malformed: bad key id field (%d bytes)", len(v))
		}
		h.keyID = id
	}
	return h, nil
}

func notKeyIDRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
}

// fingerprint identifies a secret without revealing it: the first 8 hex
// digits of its SHA-256.
func fingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:4])
}

// validFingerprint reports whether s looks like rediscache's identity
// fingerprints (8 or 32 lowercase hex digits); nothing else read from
// Redis is printed in their place.
func validFingerprint(s string) bool {
	if len(s) != 8 && len(s) != 32 {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool { return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') }) < 0
}

// plainInt reads a decimal field rediscache wrote; ok is false for
// anything else.
func plainInt(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= 0 && strconv.FormatInt(n, 10) == s
}

// safeCode keeps a short, plain code (a backoff's class or code) and drops
// anything else, which may be a message holding a secret.
func safeCode(s string) (string, bool) {
	if s == "" || len(s) > 32 || strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r))
	}) >= 0 {
		return "", false
	}
	return s, true
}

// event is a parsed payload: "<r|i> <version> <name>".
type event struct {
	kind    string // "refresh" or "invalidate"
	version int64
	name    string
}

// maxEventLen bounds a payload, as rediscache does.
const maxEventLen = 2 + 20 + 1 + rediscache.MaxNameLen

// parseEvent accepts only what rediscache publishes.
func parseEvent(p string) (event, bool) {
	if len(p) > maxEventLen {
		return event{}, false
	}
	k, rest, ok1 := strings.Cut(p, " ")
	v, name, ok2 := strings.Cut(rest, " ")
	version, err := strconv.ParseInt(v, 10, 64)
	if !ok1 || !ok2 || err != nil || version <= 0 || strconv.FormatInt(version, 10) != v || checkName(name) != nil {
		return event{}, false
	}
	switch k {
	case "r":
		return event{"refresh", version, name}, true
	case "i":
		return event{"invalidate", version, name}, true
	}
	return event{}, false
}

// channels returns the event channels of a deployment on DB db, as
// rediscache names them: "<prefix>events" on DB 0 and on a Cluster,
// "<prefix>events:db<N>" on DB N, and with legacy also the former.
func channels(prefix string, db int, legacy bool) []string {
	base := prefix + "events"
	if db == 0 {
		return []string{base}
	}
	own := base + ":db" + strconv.Itoa(db)
	if legacy {
		return []string{own, base}
	}
	return []string{own}
}
