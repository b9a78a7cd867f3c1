package main

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestUnreachable: every command says which Redis it cannot reach, with
// exit code 2, quickly, and never prints the URL's password.
func TestUnreachable(t *testing.T) {
	addr := closedAddr(t)
	for _, args := range [][]string{
		{"-redis", "redis://operator:PASSWORD-SECRET-123@" + addr, "list"},
		{"-redis", "redis://operator:PASSWORD-SECRET-123@" + addr + "/2", "status", "acct"},
		{"-redis", "redis://" + addr, "watch"},
		{"-redis", "redis://" + addr, "invalidate", "acct", "-version", "1"},
		{"-cluster", addr, "list"},
	} {
		start := time.Now()
		r := runCmd(t, args...)
		if r.code != exitError || !strings.Contains(r.stderr, "cannot reach Redis at "+addr+": ") || r.stdout != "" {
			t.Errorf("%q: %v", args, r)
		}
		if took := time.Since(start); took > 4*time.Second {
			t.Errorf("%q took %v", args, took)
		}
		noSecrets(t, []string{"PASSWORD-SECRET-123"}, r.stdout, r.stderr)
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitError, "usage: tokencache"},
		{[]string{"bogus"}, exitError, `unknown command "bogus"`},
		{[]string{"-h"}, exitOK, "usage: tokencache"},
		{[]string{"status", "-h"}, exitOK, "usage: tokencache status"},
		{[]string{"list", "extra"}, exitError, "usage: tokencache list"},
		{[]string{"-redis", "http://x", "list"}, exitError, "invalid URL scheme"},
		{[]string{"-prefix", "a b", "list"}, exitError, "-prefix"},
	} {
		r := runCmd(t, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: %v\nwant exit %d and %q", tc.args, r, tc.code, tc.want)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args, pos []string
		json      bool
		prefix    string
	}{
		{[]string{"a"}, []string{"a"}, false, "p"},
		{[]string{"a", "-json"}, []string{"a"}, true, "p"},
		{[]string{"-json", "a", "-prefix", "x", "b"}, []string{"a", "b"}, true, "x"},
		{[]string{"a", "--", "-json"}, []string{"a", "-json"}, false, "p"},
	} {
		cfg := &config{prefix: "p"}
		fs := cfg.flagSet("t", io.Discard)
		j := fs.Bool("json", false, "")
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil || !slices.Equal(pos, tc.pos) || *j != tc.json || cfg.prefix != tc.prefix {
			t.Errorf("%q: %q, json %v, prefix %q, %v", tc.args, pos, *j, cfg.prefix, err)
		}
	}
	fs := (&config{}).flagSet("t", io.Discard)
	if _, err := parseInterspersed(fs, []string{"a", "-nope"}); err == nil || err == flag.ErrHelp {
		t.Errorf("an unknown flag after an argument: %v", err)
	}
}
