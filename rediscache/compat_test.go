package rediscache_test

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/scenario"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// previousRelease is what the release before DB-scoped channels wrote for a
// refresh: the token value "1|<version>|<lifetime ms>|<token>" with a TTL,
// the fence's written version, and "r <version> <name>" on <prefix>events,
// whatever the DB.
func previousRelease(ctx context.Context, rdb redis.UniversalClient, p, name, value string, version int64, ttl time.Duration) error {
	tag := "{" + p + name + "}"
	v := strconv.FormatInt(version, 10)
	if err := rdb.HSet(ctx, tag+":fence", "written", v, "next", v).Err(); err != nil {
		return err
	}
	if err := rdb.Set(ctx, tag+":token", "1|"+v+"|"+strconv.FormatInt(ttl.Milliseconds(), 10)+"|"+value, ttl).Err(); err != nil {
		return err
	}
	return rdb.Publish(ctx, p+"events", "r "+v+" "+name).Err()
}

// forEachStandalone runs fn on miniredis and on the real standalone server
// if there is one: DBs other than 0 exist only there.
func forEachStandalone(t *testing.T, name string, fn func(t *testing.T, addr string)) {
	t.Run(name+"/miniredis", func(t *testing.T) { fn(t, miniredis.RunT(t).Addr()) })
	if addr := os.Getenv(realRedisEnv); addr != "" {
		t.Run(name+"/redis", func(t *testing.T) { fn(t, addr) })
	}
}

// oldEvent is the payload the previous release parses.
var oldEvent = regexp.MustCompile(`^[ri] [1-9][0-9]* [^ {}]+$`)

// TestRollingDeployOnDB1: during a rolling deploy of a deployment on DB 1,
// instances of the previous release publish on <prefix>events. With
// LegacyEvents a new instance hears them and adopts their token without
// fetching, and publishes its own events where old instances listen, in the
// payload they parse. Without it, the new instance does not hear the old
// channel (it re-reads when its token is invalidated instead).
func TestRollingDeployOnDB1(t *testing.T) {
	ctx := context.Background()
	for _, legacy := range []bool{true, false} {
		forEachStandalone(t, "LegacyEvents="+strconv.FormatBool(legacy), func(t *testing.T, addr string) {
			rdb := redis.NewClient(&redis.Options{Addr: addr, DB: 1})
			t.Cleanup(func() { _ = rdb.Close() })
			p := prefix(t)
			up := newUpstream(time.Hour)
			o := testOptions(p)
			o.LegacyEvents = legacy
			src := source(t, rdb, o, up)
			old := rdb.Subscribe(ctx, p+"events") // an instance of the previous release
			defer old.Close()
			if _, err := old.Receive(ctx); err != nil {
				t.Fatal(err)
			}
			mine, err := src.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			waitSubs(t, rdb, 2, p+"events", p+"events:db1")
			select {
			case m := <-old.Channel():
				if !legacy {
					t.Fatalf("the old channel heard %q without LegacyEvents", m.Payload)
				}
				if !oldEvent.MatchString(m.Payload) || !strings.HasSuffix(m.Payload, " c") {
					t.Errorf("payload %q is not what the previous release parses", m.Payload)
				}
			case <-time.After(time.Second):
				if legacy {
					t.Fatal("the previous release heard nothing of the new instance's refresh")
				}
			}
			// An old instance refreshes.
			sh, _ := src.Token(ctx)
			next := time.Now().UnixMilli() + 1000
			if err := previousRelease(ctx, rdb, p, "c", "from-the-old-release-0123", next, time.Hour); err != nil {
				t.Fatal(err)
			}
			// Callers at a steady pace, for a second at most: without
			// LegacyEvents, the second passes on purpose (nothing must
			// arrive).
			heard := scenario.Retry(time.Second, time.Millisecond, func() bool {
				tok, err := src.Token(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if tok.Value != "from-the-old-release-0123" && (tok.Value != mine.Value || tok.Value != sh.Value) {
					t.Fatalf("Token = %v", tok)
				}
				return tok.Value == "from-the-old-release-0123"
			})
			if heard != legacy {
				t.Fatalf("LegacyEvents %v, but the new instance took the old release's token: %v", legacy, heard)
			}
			if !legacy {
				// Told that its token is bad, it re-reads and takes the
				// old release's token without fetching.
				if err := src.Invalidate(ctx, mine.Value); err != nil {
					t.Fatal(err)
				}
				if tok, err := src.Token(ctx); err != nil || tok.Value != "from-the-old-release-0123" {
					t.Fatalf("after Invalidate: %v, %v", tok, err)
				}
			}
			if up.Calls() != 1 {
				t.Errorf("upstream calls = %d, want 1", up.Calls())
			}
		})
	}
}

// TestOversizedTokenIsNotShared: a token too long to be read back is never
// written (Save refuses it with a typed error), and a Source that fetched
// one backs off instead of letting instances fetch in turn.
func TestOversizedTokenIsNotShared(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		p := prefix(t)
		rdb := b.Client(t)
		for _, enc := range []*rediscache.Keyring{nil, {Current: "k", Keys: map[string][]byte{"k": make([]byte, 32)}}} {
			o := testOptions(p)
			o.Encryption = enc
			c, err := newCache(t, rdb, o).Credential("direct")
			if err != nil {
				t.Fatal(err)
			}
			v, _ := c.NextVersion(ctx)
			longest := token.Shared{Value: strings.Repeat("t", token.MaxTokenLen), Version: v, TTL: time.Minute, Lifetime: time.Minute}
			if err := c.Save(ctx, longest); err != nil {
				t.Fatalf("Save of MaxTokenLen bytes: %v", err)
			}
			if got, err := c.Load(ctx); err != nil || got.Value != longest.Value {
				t.Fatalf("Load of MaxTokenLen bytes: %v", err)
			}
			v, _ = c.NextVersion(ctx)
			longer := token.Shared{Value: strings.Repeat("t", token.MaxTokenLen+1), Version: v, TTL: time.Minute, Lifetime: time.Minute}
			if err := c.Save(ctx, longer); !errors.Is(err, token.ErrTokenTooLarge) {
				t.Fatalf("Save of MaxTokenLen+1 bytes: %v, want ErrTokenTooLarge", err)
			}
		}
		scenario.OversizedTokenIsNotShared(t, redisBackend(t, b, testOptions(p)))
	})
}

// Grammars of the previous release's readers.
var (
	oldToken   = regexp.MustCompile(`^(1\|[1-9][0-9]*\|[1-9][0-9]*\|.+|e\|[1-9][0-9]*\|[1-9][0-9]*\|[A-Za-z0-9_-]+\|[A-Za-z0-9_-]+)$`)
	oldInteger = regexp.MustCompile(`^-?[0-9]+$`)
)

// TestFormatsStayCompatible runs the previous release's writer next to the
// current code (docs/compatibility.md): the current code reads its token,
// fence and backoff record and acts on them; and what the current code
// writes parses with the previous release's grammar.
func TestFormatsStayCompatible(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		tag := "{" + p + "c}:"
		// The previous release wrote a token, its fence, and a backoff
		// record with a message.
		v := time.Now().UnixMilli()
		if err := previousRelease(ctx, rdb, p, "c", "previous-release-token-0123", v, time.Hour); err != nil {
			t.Fatal(err)
		}
		rdb.HSet(ctx, tag+"backoff", "failures", 3, "until", time.Now().Add(time.Hour).UnixMilli(), "err", "fetch: secret=S3CRET")
		c, _ := newCache(t, rdb, testOptions(p)).Credential("c")
		sh, err := c.Load(ctx)
		if err != nil || sh.Value != "previous-release-token-0123" || sh.Version != v || sh.Fence.Written != v {
			t.Fatalf("reading the previous release's token: %+v, %v", sh.Fence, err)
		}
		bo, err := c.LoadBackoff(ctx)
		if err != nil || bo.Failures != 3 || bo.Remaining < 59*time.Minute || bo.Class != "unknown" {
			t.Errorf("reading the previous release's backoff: %+v, %v", bo, err)
		}
		// A Source honours both: it serves the token and does not fetch.
		up := newUpstream(time.Hour)
		src := source(t, rdb, testOptions(p), up)
		if tok, err := src.Token(ctx); err != nil || tok.Value != "previous-release-token-0123" || up.Calls() != 0 {
			t.Fatalf("Token = %v, %v, %d fetches", tok, err, up.Calls())
		}
		// The current code writes; the previous grammar still parses it.
		if err := src.Invalidate(ctx, "previous-release-token-0123"); err != nil {
			t.Fatal(err)
		}
		// The previous release's backoff (an hour) applies: clear it to see
		// the current code write.
		if err := src.ResetBackoff(ctx); err != nil {
			t.Fatal(err)
		}
		// A refresh that the Invalidate started may still be reading the
		// record as the reset lands: callers try again, and the Source
		// re-reads the record within RetryInterval. The refresher serves its
		// token before its save lands: wait for the save too.
		var raw string
		if !scenario.Retry(3*time.Second, 5*time.Millisecond, func() bool {
			_, err = src.Token(ctx)
			raw, _ = rdb.Get(ctx, tag+"token").Result()
			return err == nil && raw != "" || err != nil && !errors.Is(err, token.ErrUpstreamBackoff)
		}) || err != nil {
			t.Fatalf("after ResetBackoff: %v (stored %.10q)", err, raw)
		}
		if !oldToken.MatchString(raw) {
			t.Errorf("token value %.20q… does not parse as the previous release's", raw)
		}
		fence, _ := rdb.HGetAll(ctx, tag+"fence").Result()
		for _, f := range []string{"next", "written", "invalidated"} {
			if !oldInteger.MatchString(fence[f]) {
				t.Errorf("fence %s = %q, not an integer the previous release reads", f, fence[f])
			}
		}
		_ = c.SaveBackoff(ctx, token.SharedBackoff{Failures: 2, Remaining: time.Minute, Class: token.ClassTemporary})
		h, _ := rdb.HGetAll(ctx, tag+"backoff").Result()
		if !oldInteger.MatchString(h["failures"]) || !oldInteger.MatchString(h["until"]) {
			t.Errorf("backoff %v: failures and until must stay integers", h)
		}
		if _, ok := h["err"]; ok {
			t.Errorf("the previous release's message survived a write: %v", h)
		}
	})
}
