package rediscache

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/token"
)

// TestParseEventRefusesHostilePayloads: a payload from the channel is
// accepted only in the exact form formatEvent writes, for a valid name and
// a positive version.
func TestParseEventRefusesHostilePayloads(t *testing.T) {
	for _, p := range []string{
		"", "r", "r 5", "r 5 ", "x 5 c", "r -5 c", "r 0 c", "r 5x c",
		"r 99999999999999999999 c", // overflows int64
		"r 5 a b",                  // a name with a space
		"r 5 {c}",                  // braces
		"r 5 " + strings.Repeat("n", MaxNameLen+1),
		"r 5 c\x00",
		strings.Repeat("r 5 c", 1000),
	} {
		if name, ev, ok := parseEvent(p); ok {
			t.Errorf("parseEvent(%.40q) = %q, %+v; want refused", p, name, ev)
		}
	}
	name, ev, ok := parseEvent(formatEvent('i', 42, "wechat:wx1"))
	if !ok || name != "wechat:wx1" || ev != (token.Event{Kind: token.Invalidated, Version: 42}) {
		t.Errorf("round trip = %q, %+v, %v", name, ev, ok)
	}
	long := strings.Repeat("n", MaxNameLen)
	if _, _, ok := parseEvent(formatEvent('r', 1<<62, long)); !ok {
		t.Error("the longest valid event was refused")
	}
}

// TestChannels: the channel names the DB, except on DB 0 and a Cluster,
// where it is the one earlier releases used; LegacyEvents adds that one. The
// DB is known from the options of these clients, without I/O.
func TestChannels(t *testing.T) {
	db := func(n int) redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DB: n}) }
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cluster.Close()
	for _, tc := range []struct {
		name   string
		rdb    redis.UniversalClient
		legacy bool
		want   string
	}{
		{"db0", db(0), false, "p:events"},
		{"db0 legacy", db(0), true, "p:events"},
		{"db3", db(3), false, "p:events:db3"},
		{"db3 legacy", db(3), true, "p:events:db3,p:events"},
		{"cluster", cluster, true, "p:events"},
	} {
		sc := newScope(tc.rdb, Options{Prefix: "p:", LegacyEvents: tc.legacy})
		got := strings.Join(sc.known, ",")
		if got != tc.want {
			t.Errorf("%s: channels = %s, want %s", tc.name, got, tc.want)
		}
		if c, ok := tc.rdb.(*redis.Client); ok {
			_ = c.Close()
		}
	}
}

// TestLongestTokenFits: a token of token.MaxTokenLen, sealed with the
// longest key ID and the largest version and lifetime, encodes within what
// decode accepts.
func TestLongestTokenFits(t *testing.T) {
	id := strings.Repeat("k", maxKeyIDLen)
	c, err := newCodec(&Keyring{Current: id, Keys: map[string][]byte{id: make([]byte, 32)}})
	if err != nil {
		t.Fatal(err)
	}
	sh := token.Shared{Value: strings.Repeat("t", token.MaxTokenLen), Version: 1<<63 - 1, Lifetime: MaxLifetime}
	v := c.encode("n", sh)
	if len(v) > maxValueLen {
		t.Fatalf("encoded %d bytes, decode accepts %d", len(v), maxValueLen)
	}
	if _, _, got, err := c.decode("n", v); err != nil || got != sh.Value {
		t.Fatalf("decode: %v", err)
	}
	if _, err := newCodec(&Keyring{Current: id + "k", Keys: map[string][]byte{id + "k": make([]byte, 32)}}); err == nil {
		t.Error("a key ID longer than maxKeyIDLen was accepted")
	}
}

// FuzzParseEvent feeds arbitrary payloads to the event parser: it never
// panics, and what it accepts is exactly what formatEvent writes for a valid
// name and a positive version.
func FuzzParseEvent(f *testing.F) {
	for _, s := range []string{
		"r 1795466336494 wechat:wx1", "i 5 c", "r 4611686018427387904 c",
		"r -1 c", "r 5 a b", "x 5 c", "", "r  c", "r 5 {c}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		name, ev, ok := parseEvent(p)
		if !ok {
			return
		}
		kind := byte('r')
		if ev.Kind == token.Invalidated {
			kind = 'i'
		}
		if ev.Version <= 0 || validName(name) != nil || formatEvent(kind, ev.Version, name) != p {
			t.Fatalf("accepted %q as %q %+v", p, name, ev)
		}
	})
}
