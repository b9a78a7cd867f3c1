package rediscache

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tokencache/tokencache/token"
)

// Format versions, the first field of every stored value. A reader that meets
// another version treats the value as a miss, and the next refresh
// overwrites it.
const (
	formatPlain  = "1" // 1|<version>|<lifetime ms>|<token>
	formatSealed = "e" // e|<version>|<lifetime ms>|<key id>|<base64url(nonce, AES-GCM sealed token)>
)

// MaxLifetime is the longest lifetime a token is stored with: a longer one
// (a token that "never" expires) is stored as living MaxLifetime and is
// refreshed ahead of that. It bounds the stored lifetime field (FuzzDecode
// found that a huge one overflowed time.Duration).
const MaxLifetime = 400 * 24 * time.Hour

// maxValueLen bounds what decode accepts, so that a huge foreign value under
// our key is rejected instead of being cached. It holds a token of
// token.MaxTokenLen sealed (base64 of nonce, token and tag, 43,728 bytes)
// with its header; Save refuses anything longer, so that nothing is written
// that Load would call malformed.
const maxValueLen = 64 << 10

// maxKeyIDLen bounds a Keyring key ID, which every sealed value carries.
const maxKeyIDLen = 64

// Keyring seals tokens at rest with AES-GCM, so that a value read from Redis
// is useless without the key. Every instance of a credential needs the same
// keys. To rotate: first add the new key to every instance's Keys, then make
// it Current everywhere (values sealed with the old key are still read, and
// the next refresh seals with the new one), then drop the old key.
//
// To turn encryption on in a rolling deploy, without instances calling each
// other's values malformed and fetching: deploy a Keyring with WritePlain
// and AcceptPlain everywhere, then without WritePlain, then, one token
// lifetime later, without AcceptPlain. To turn it off, go back the same way.
type Keyring struct {
	// Current is the ID of the key that seals new values: letters, digits,
	// '-' or '_'.
	Current string
	// Keys maps key IDs to AES keys of 16, 24 or 32 bytes.
	Keys map[string][]byte
	// WritePlain writes values in clear text while reading sealed ones: the
	// first step of a rolling deploy, while instances without the Keyring
	// still run. It implies AcceptPlain.
	WritePlain bool
	// AcceptPlain reads values in clear text, which a Keyring otherwise
	// refuses as malformed so that a value injected into Redis by someone
	// without the key is not served. Set it while migrating.
	AcceptPlain bool
}

// codec encodes stored values, sealing them if it has keys.
type codec struct {
	current     string
	aeads       map[string]cipher.AEAD
	writePlain  bool // Keyring.WritePlain
	refusePlain bool // a Keyring without AcceptPlain
}

func newCodec(k *Keyring) (codec, error) {
	if k == nil {
		return codec{}, nil
	}
	c := codec{current: k.Current, aeads: make(map[string]cipher.AEAD, len(k.Keys)),
		// Writing clear text implies reading it: an instance must read its
		// own writes.
		writePlain: k.WritePlain, refusePlain: !k.AcceptPlain && !k.WritePlain}
	for id, key := range k.Keys {
		if id == "" || len(id) > maxKeyIDLen || strings.IndexFunc(id, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
		}) >= 0 {
			return codec{}, fmt.Errorf("rediscache: key id %q: use 1 to %d letters, digits, '-' and '_'", id, maxKeyIDLen)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return codec{}, fmt.Errorf("rediscache: key %q: %w", id, err)
		}
		if c.aeads[id], err = cipher.NewGCM(block); err != nil {
			return codec{}, fmt.Errorf("rediscache: key %q: %w", id, err)
		}
	}
	if c.aeads[k.Current] == nil {
		return codec{}, fmt.Errorf("rediscache: the current key %q is not in Keys", k.Current)
	}
	return c, nil
}

// encode lays a token out as "1|<version>|<lifetime ms>|<value>", or sealed
// as "e|<version>|<lifetime ms>|<key id>|<sealed>". The version is parsed by
// the invalidate script, so it stays in clear text and comes second. The
// sealed token is bound to the credential, version and lifetime, so that a
// sealed value cannot be moved to another key or replayed under another
// version.
func (c codec) encode(name string, sh token.Shared) string {
	head := strconv.FormatInt(sh.Version, 10) + "|" + strconv.FormatInt(sh.Lifetime.Milliseconds(), 10)
	if c.aeads == nil || c.writePlain {
		return formatPlain + "|" + head + "|" + sh.Value
	}
	aead := c.aeads[c.current]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(sh.Value)+aead.Overhead())
	_, _ = rand.Read(nonce)
	sealed := aead.Seal(nonce, nonce, []byte(sh.Value), []byte(name+"|"+head))
	return formatSealed + "|" + head + "|" + c.current + "|" + base64.RawURLEncoding.EncodeToString(sealed)
}

// errNoKey is a sealed value whose key this instance does not have.
var errNoKey = errors.New("no key to open it")

// decode parses what encode wrote. Errors wrap token.ErrMalformed and never
// include the value.
func (c codec) decode(name, s string) (version int64, lifetime time.Duration, value string, err error) {
	bad := func(why string) (int64, time.Duration, string, error) {
		return 0, 0, "", fmt.Errorf("%w: %s (%d bytes)", token.ErrMalformed, why, len(s))
	}
	if len(s) > maxValueLen {
		return bad("value too large")
	}
	format, rest, _ := strings.Cut(s, "|")
	if format != formatPlain && format != formatSealed {
		return bad("unknown format version")
	}
	if format == formatPlain && c.refusePlain {
		return bad("clear text refused with a Keyring (set AcceptPlain while migrating)")
	}
	v, rest, ok := strings.Cut(rest, "|")
	if !ok {
		return bad("no version field")
	}
	version, perr := strconv.ParseInt(v, 10, 64)
	if perr != nil || version <= 0 {
		return bad("bad version field")
	}
	l, value, ok := strings.Cut(rest, "|")
	if !ok {
		return bad("no lifetime field")
	}
	ms, perr := strconv.ParseInt(l, 10, 64)
	if perr != nil || ms <= 0 || ms > MaxLifetime.Milliseconds() {
		return bad("bad lifetime field")
	}
	if format == formatSealed {
		id, sealed, _ := strings.Cut(value, "|")
		aead := c.aeads[id]
		if aead == nil {
			return bad(fmt.Sprintf("sealed with key %q: %v", id, errNoKey))
		}
		raw, derr := base64.RawURLEncoding.DecodeString(sealed)
		if derr != nil || len(raw) < aead.NonceSize() {
			return bad("bad sealed token")
		}
		plain, oerr := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(name+"|"+v+"|"+l))
		if oerr != nil {
			return bad("sealed token does not open with key " + strconv.Quote(id))
		}
		value = string(plain)
	}
	if value == "" {
		return bad("empty token")
	}
	return version, time.Duration(ms) * time.Millisecond, value, nil
}
