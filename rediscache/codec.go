package rediscache

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tokencache/tokencache/token"
)

// formatVersion is the first field of every stored value. A reader that
// meets another version treats the value as a miss, and the next refresh
// overwrites it.
const formatVersion = "1"

// maxLifetime bounds the lifetime field (found by FuzzDecode: a huge one
// overflowed time.Duration).
const maxLifetime = 400 * 24 * time.Hour

// maxValueLen bounds what decode accepts, so that a huge foreign value under
// our key is rejected instead of being cached.
const maxValueLen = 64 << 10

// encode lays a token out as "1|<fence version>|<lifetime ms>|<value>". The
// fence version is parsed by the invalidate script, so it stays in clear
// text and comes first.
func encode(sh token.Shared) string {
	var b strings.Builder
	b.Grow(len(sh.Value) + 40)
	b.WriteString(formatVersion)
	b.WriteByte('|')
	b.WriteString(strconv.FormatInt(sh.Version, 10))
	b.WriteByte('|')
	b.WriteString(strconv.FormatInt(sh.Lifetime.Milliseconds(), 10))
	b.WriteByte('|')
	b.WriteString(sh.Value)
	return b.String()
}

// decode parses what encode wrote. Errors wrap token.ErrMalformed and never
// include the value.
func decode(s string) (version int64, lifetime time.Duration, value string, err error) {
	bad := func(why string) (int64, time.Duration, string, error) {
		return 0, 0, "", fmt.Errorf("%w: %s (%d bytes)", token.ErrMalformed, why, len(s))
	}
	if len(s) > maxValueLen {
		return bad("value too large")
	}
	f, rest, ok := strings.Cut(s, "|")
	if !ok || f != formatVersion {
		return bad("unknown format version")
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
	if perr != nil || ms <= 0 || ms > maxLifetime.Milliseconds() {
		return bad("bad lifetime field")
	}
	if value == "" {
		return bad("empty token")
	}
	return version, time.Duration(ms) * time.Millisecond, value, nil
}
