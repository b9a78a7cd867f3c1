package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tokencache/tokencache/internal/redistest"
)

// TestInvalidate: a version that is not the stored one is refused (exit 3,
// naming the stored one); the stored one is removed (exit 0), and status
// then says it was invalidated.
func TestInvalidate(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		d := deploy(t, b)
		// A live Source would refetch at once after the invalidation.
		_ = d.plain.Close()
		cred, _ := d.cache.Credential("acct")
		sh, err := cred.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		v := fmt.Sprint(sh.Version)
		for _, tc := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"invalidate", "acct", "-version", fmt.Sprint(sh.Version - 1)}, exitNotInvalidated,
				fmt.Sprintf("not invalidated: version %d is not the stored one (stored: %d)", sh.Version-1, sh.Version)},
			{[]string{"invalidate", "-version", v, "acct"}, exitOK, "invalidated acct version " + v},
			{[]string{"invalidate", "acct", "-version", v}, exitNotInvalidated, "(no token stored)"},
			{[]string{"invalidate", "acct"}, exitError, "-version V is required"},
			{[]string{"invalidate", "-version", v}, exitError, "usage: tokencache invalidate"},
			{[]string{"invalidate", "a b", "-version", v}, exitError, "invalid credential name"},
		} {
			r := runCmd(t, append(connFlags(b, d.prefix), tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
				t.Errorf("%q: %v\nwant exit %d and %q", tc.args, r, tc.code, tc.want)
			}
			noSecrets(t, d.secrets, r.stdout, r.stderr)
		}
		if _, err := cred.Load(ctx); err == nil {
			t.Error("the token is still stored")
		}
		r := runCmd(t, append(connFlags(b, d.prefix), "status", "acct")...)
		if !strings.Contains(r.stdout, "none (version "+v+" was invalidated)") {
			t.Errorf("status after invalidate: %v", r)
		}
	})
}
