package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// statusJSON runs status -json and decodes it.
func statusJSON(t *testing.T, b redistest.Backend, d *deployment, name string) (status, result) {
	t.Helper()
	r := runCmd(t, append(connFlags(b, d.prefix), "status", "-json", name)...)
	var st status
	if r.code != exitOK {
		t.Fatalf("status %s: %v", name, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status %s: %v\n%v", name, err, r)
	}
	return st, r
}

func TestStatus(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		d := deploy(t, b)
		// Another instance holds the refresh lock of "acct".
		cred, _ := d.cache.Credential("acct")
		held, err := cred.TryLock(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Release(ctx)
		sh, err := cred.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st, r := statusJSON(t, b, d, "acct")
		sum := sha256.Sum256([]byte(sh.Value))
		tok := st.Token
		switch {
		case tok == nil || tok.Version != sh.Version || tok.Sealed || tok.Fingerprint != hex.EncodeToString(sum[:4]):
			t.Errorf("token = %+v, want version %d and the value's fingerprint", tok, sh.Version)
		case tok.LifetimeMS != sh.Lifetime.Milliseconds() || tok.TTLMS <= 0 || tok.TTLMS > tok.LifetimeMS:
			t.Errorf("token lifetime %d ms, TTL %d ms; want %v and less", tok.LifetimeMS, tok.TTLMS, sh.Lifetime)
		case st.Fence == nil || st.Fence.Written != sh.Version:
			t.Errorf("fence = %+v", st.Fence)
		case st.Lock == nil || st.Lock.Holder != d.cache.Instance() || st.Lock.TTLMS <= 0:
			t.Errorf("lock = %+v, want held by %q", st.Lock, d.cache.Instance())
		case len(st.Limits) != 1 || st.Limits[0].Action != "force_refresh" || st.Limits[0].Count != 1:
			t.Errorf("limits = %+v", st.Limits)
		case st.Refresh != nil || st.Backoff != nil || st.Order != nil:
			t.Errorf("refresh %+v, backoff %+v, order %+v: want none", st.Refresh, st.Backoff, st.Order)
		}
		text := runCmd(t, append(connFlags(b, d.prefix), "status", "acct")...)
		for _, want := range []string{"held by " + d.cache.Instance(), "sha256 " + tok.Fingerprint, "force_refresh: 1 on "} {
			if !strings.Contains(text.stdout, want) {
				t.Errorf("status lacks %q:\n%v", want, text)
			}
		}
		noSecrets(t, d.secrets, r.stdout, r.stderr, text.stdout, text.stderr)
	})
}

// TestStatusRefreshAndBackoff: refresh state is shown by its generation,
// a backoff by its count and class, never the state or the error message.
func TestStatusRefreshAndBackoff(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		d := deploy(t, b)
		rot, r1 := statusJSON(t, b, d, "rot")
		if rot.Refresh == nil || !rot.Refresh.Present || rot.Refresh.Generation != 2 || rot.Token == nil {
			t.Errorf("rot: refresh %+v, token %+v; want generation 2, present, and a token", rot.Refresh, rot.Token)
		}
		failing, r2 := statusJSON(t, b, d, "failing")
		if bo := failing.Backoff; bo == nil || bo.Failures != 1 || bo.Class != token.ClassTemporary || failing.Token != nil {
			t.Errorf("failing: backoff %+v, token %+v", failing.Backoff, failing.Token)
		}
		var texts []string
		for _, name := range []string{"rot", "failing"} {
			r := runCmd(t, append(connFlags(b, d.prefix), "status", name)...)
			texts = append(texts, r.stdout, r.stderr)
		}
		if !strings.Contains(texts[0], "generation 2, state present (not shown)") || !strings.Contains(texts[2], "1 failures") {
			t.Errorf("status texts:\n%s", strings.Join(texts, "\n"))
		}
		noSecrets(t, d.secrets, append(texts, r1.stdout, r2.stdout)...)
	})
}

func TestStatusErrors(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		d := deploy(t, b)
		for _, tc := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"status", "nobody"}, exitNothing, `no keys for credential "nobody"`},
			{[]string{"status", "a{b}"}, exitError, "invalid credential name"},
			{[]string{"status"}, exitError, "usage: tokencache status"},
			{[]string{"status", "a", "b"}, exitError, "usage: tokencache status"},
			{[]string{"status", "-bogus", "acct"}, exitError, "flag provided but not defined"},
		} {
			r := runCmd(t, append(connFlags(b, d.prefix), tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
				t.Errorf("%q: %v\nwant exit %d and %q", tc.args, r, tc.code, tc.want)
			}
		}
	})
}

// TestStatusHostileKeys: keys of the wrong type or holding what rediscache
// never writes are described, never echoed.
func TestStatusHostileKeys(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		d := deploy(t, b)
		tag := "{" + d.prefix + "junk}"
		secrets := []string{"HOSTILE-TOKEN-SECRET", "HOSTILE-LOCK-SECRET", "HOSTILE-ERR-SECRET",
			"HOSTILE-CLASS-SECRET-0123456789-abcdef", "HOSTILE-ID-SECRET", "HOSTILE-ORDER-SECRET", "HOSTILE-GEN-SECRET", "HOSTILE-LIMIT-SECRET"}
		p := d.rdb.TxPipeline()
		p.Set(ctx, tag+":token", "1|12|bad|"+secrets[0], time.Minute)
		p.Set(ctx, tag+":lock", secrets[1]+"\x00\x01", 0)
		p.HSet(ctx, tag+":backoff", "failures", "2", "err", secrets[2], "class", secrets[3])
		p.HSet(ctx, tag+":fence", "written", "7", "id", secrets[4])
		p.Set(ctx, tag+":order", secrets[5], time.Minute)
		p.HSet(ctx, tag+":refresh", "gen", secrets[6])
		p.Set(ctx, tag+":limit:x", secrets[7], 0)
		if _, err := p.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		j := runCmd(t, append(connFlags(b, d.prefix), "status", "-json", "junk")...)
		r := runCmd(t, append(connFlags(b, d.prefix), "status", "junk")...)
		if r.code != exitOK || j.code != exitOK {
			t.Fatalf("status junk: %v\n%v", r, j)
		}
		for _, want := range []string{"malformed", "not a lock value tokencache writes", "older release (not shown)",
			"not rediscache's", "not an order", "generation rediscache does not write", "x: wrong type"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("status junk lacks %q:\n%v", want, r)
			}
		}
		noSecrets(t, append(secrets, d.secrets...), r.stdout, r.stderr, j.stdout, j.stderr)
	})
}

// TestStatusSealed: a token sealed with a Keyring is shown by its clear
// version and key ID, without a fingerprint.
func TestStatusSealed(t *testing.T) {
	backends(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		d := &deployment{prefix: redistest.Prefix(t), rdb: b.Client(t)}
		var err error
		d.cache, err = rediscache.New(d.rdb, rediscache.Options{Prefix: d.prefix, Source: token.Options{Logger: quiet},
			Encryption: &rediscache.Keyring{Current: "k-2026", Keys: map[string][]byte{"k-2026": make([]byte, 32)}}})
		if err != nil {
			t.Fatal(err)
		}
		src := d.source(t, "sealed", tokentest.New(time.Hour))
		tok, err := src.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st, r := statusJSON(t, b, d, "sealed")
		if st.Token == nil || !st.Token.Sealed || st.Token.KeyID != "k-2026" || st.Token.Version == 0 || st.Token.Fingerprint != "" {
			t.Errorf("token = %+v", st.Token)
		}
		text := runCmd(t, append(connFlags(b, d.prefix), "status", "sealed")...)
		if !strings.Contains(text.stdout, `sealed with key "k-2026"`) {
			t.Errorf("status: %v", text)
		}
		noSecrets(t, append(d.storedSecrets(t), tok.Value), r.stdout, text.stdout)
	})
}
