package main

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitKey(t *testing.T) {
	const p = "tc:"
	for _, tc := range []struct {
		key, name, kind string
		ok              bool
	}{
		{"{tc:wechat:wx1}:token", "wechat:wx1", "token", true},
		{"{tc:a}:refresh", "a", "refresh", true},
		{"{tc:a}:limit:force_refresh", "a", "limit:force_refresh", true},
		{"{tc:a}:limit:", "", "", false},
		{"{tc:a}:other", "", "", false},
		{"{tc:}:token", "", "", false},
		{"{other:a}:token", "", "", false},
		{"{tc:a}token", "", "", false},
	} {
		name, kind, ok := splitKey(p, tc.key)
		if name != tc.name || kind != tc.kind || ok != tc.ok {
			t.Errorf("splitKey(%q) = %q, %q, %v", tc.key, name, kind, ok)
		}
	}
}

func TestParseHeader(t *testing.T) {
	secret := "SECRET-VALUE-0123456789"
	for _, tc := range []struct {
		v       string
		version int64
		sealed  bool
		keyID   string
		bad     bool
	}{
		{"1|17|3600000|" + secret, 17, false, "", false},
		{"1|17|3600000|a|b", 17, false, "", false},
		{"e|18|1000|k-2026|" + secret, 18, true, "k-2026", false},
		{"e|18|1000|" + secret, 0, false, "", true}, // no key id field
		{"2|17|1|" + secret, 0, false, "", true},
		{"1|x|1|" + secret, 0, false, "", true},
		{"1|17|0|" + secret, 0, false, "", true},
		{secret, 0, false, "", true},
	} {
		h, err := parseHeader(tc.v)
		if (err != nil) != tc.bad || h.version != tc.version || h.sealed != tc.sealed || h.keyID != tc.keyID {
			t.Errorf("parseHeader(%q) = %+v, %v", tc.v, h, err)
		}
		if err != nil && strings.Contains(err.Error(), "SECRET") {
			t.Errorf("the error holds the value: %v", err)
		}
	}
}

func TestParseEvent(t *testing.T) {
	for _, tc := range []struct {
		p  string
		ev event
		ok bool
	}{
		{"r 12 wechat:wx1", event{"refresh", 12, "wechat:wx1"}, true},
		{"i 7 a", event{"invalidate", 7, "a"}, true},
		{"x 7 a", event{}, false},
		{"r 07 a", event{}, false},
		{"r -1 a", event{}, false},
		{"r 1 a b", event{}, false},
		{"r 1 " + strings.Repeat("a", 300), event{}, false},
	} {
		if ev, ok := parseEvent(tc.p); ev != tc.ev || ok != tc.ok {
			t.Errorf("parseEvent(%q) = %+v, %v", tc.p, ev, ok)
		}
	}
}

func TestChannels(t *testing.T) {
	for _, tc := range []struct {
		db     int
		legacy bool
		want   []string
	}{
		{0, false, []string{"p:events"}},
		{0, true, []string{"p:events"}},
		{3, false, []string{"p:events:db3"}},
		{3, true, []string{"p:events:db3", "p:events"}},
	} {
		if got := channels("p:", tc.db, tc.legacy); !slices.Equal(got, tc.want) {
			t.Errorf("channels(db %d, legacy %v) = %q", tc.db, tc.legacy, got)
		}
	}
}
