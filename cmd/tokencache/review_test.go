package main

import (
	"testing"
)

// TestReviewMalformedURLHidesPassword: a -redis URL that does not parse
// (a typo in the port, a % in the password) is reported with the error of
// redis.ParseURL, which is net/url's *url.Error: it quotes the whole URL,
// password included, on stderr (and in a CI log or a shell history
// viewer). "Never a secret in its output" covers the operator's own
// password too (TestUnreachable checks it for an unreachable server).
func TestReviewMalformedURLHidesPassword(t *testing.T) {
	for _, args := range [][]string{
		{"-redis", "redis://operator:PASSWORD-SECRET-123@localhost:63a79", "list"},
		{"-redis", "redis://operator:PASSWORD-SECRET-123%zz@localhost:6379", "list"},
		{"-redis", "redis://operator:PASSWORD/SECRET-123@localhost:6379", "list"},
		{"-redis", "redis://operator:PASSWORD-SECRET-123@localhost:6379", "-cluster", "localhost:1", "list"},
		{"-redis", "rediss://operator:PASSWORD-SECRET-123@localhost:63a79", "-cluster", "localhost:1", "list"},
	} {
		r := runCmd(t, args...)
		if r.code == 0 {
			continue
		}
		t.Logf("%q: %v", args, r)
		noSecrets(t, []string{"PASSWORD-SECRET-123", "SECRET-123"}, r.stdout, r.stderr)
	}
}
