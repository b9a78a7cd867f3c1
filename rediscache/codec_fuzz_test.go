package rediscache

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
)

// FuzzDecode feeds arbitrary stored values to the decoder: it never panics,
// every failure wraps token.ErrMalformed without quoting the value, and what
// it accepts encodes back to a value that decodes the same.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"1|1795466336494|7200000|ACCESS_TOKEN",
		"1|5|1000|tok|with|bars",
		"2|5|1000|from-the-future",
		"1|5|10", "1||1000|x", "1|-5|1000|x", "1|5|0|x", "", "garbage",
		"1|5|1000|" + strings.Repeat("x", 512),
	} {
		f.Add(s)
	}
	sealer, err := newCodec(&Keyring{Current: "k1", Keys: map[string][]byte{"k1": make([]byte, 32)}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var plain codec
		version, lifetime, value, err := plain.decode("c", s)
		if err != nil {
			if !errors.Is(err, token.ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			if len(s) > 8 && strings.Contains(err.Error(), s) {
				t.Fatalf("error quotes the value: %v", err)
			}
			return
		}
		if version <= 0 || lifetime <= 0 || value == "" {
			t.Fatalf("accepted %q as %d, %v, %q", s, version, lifetime, value)
		}
		for _, c := range []codec{plain, sealer} {
			again := c.encode("c", token.Shared{Value: value, Version: version, Lifetime: lifetime})
			v2, l2, val2, err := c.decode("c", again)
			if err != nil || v2 != version || l2 != lifetime.Truncate(time.Millisecond) || val2 != value {
				t.Fatalf("round trip of %q: %q -> %d %v %q %v", s, again, v2, l2, val2, err)
			}
		}
		// Whatever it is, a sealing codec does not panic on it either.
		_, _, _, _ = sealer.decode("c", s)
	})
}
