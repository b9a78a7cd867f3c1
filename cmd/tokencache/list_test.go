package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tokencache/tokencache/internal/redistest"
)

func TestList(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		d := deploy(t, b)
		r := runCmd(t, append(connFlags(b, d.prefix), "list")...)
		if r.code != exitOK || r.stdout != "acct\nfailing\nrot\n" {
			t.Fatalf("list: %v", r)
		}
		j := runCmd(t, append(connFlags(b, d.prefix), "list", "-json")...)
		var got []listed
		if err := json.Unmarshal([]byte(j.stdout), &got); err != nil || j.code != exitOK {
			t.Fatalf("list -json: %v (%v)", j, err)
		}
		want := map[string]string{
			"acct":    "fence limit:force_refresh token",
			"failing": "backoff fence",
			"rot":     "fence refresh token",
		}
		for _, l := range got {
			if w := want[l.Name]; w != strings.Join(l.Keys, " ") {
				t.Errorf("%s: keys %v, want %s", l.Name, l.Keys, w)
			}
		}
		noSecrets(t, d.secrets, r.stdout, r.stderr, j.stdout, j.stderr)
	})
}

// TestListEmpty: a prefix with no credentials is said so, with exit code 1,
// and a prefix's glob characters match only themselves.
func TestListEmpty(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		d := deploy(t, b)
		for _, p := range []string{redistest.Prefix(t), strings.TrimSuffix(d.prefix, ":") + "*:", d.prefix[:4] + "?" + d.prefix[5:]} {
			r := runCmd(t, append(connFlags(b, p), "list")...)
			if r.code != exitNothing || r.stdout != "" || !strings.Contains(r.stderr, "no credentials under prefix") {
				t.Errorf("list under %q: %v", p, r)
			}
		}
	})
}
