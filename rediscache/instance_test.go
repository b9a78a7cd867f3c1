package rediscache_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// TestLockNamesItsHolder: the refresh lock's value carries the holding
// Cache's Instance (after the random token), which differs between two
// Caches of one process and names this host and process.
func TestLockNamesItsHolder(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		p := prefix(t)
		o := rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}}
		st, other := newCache(t, rdb, o), newCache(t, rdb, o)
		if st.Instance() == other.Instance() {
			t.Errorf("two Caches share the identity %q", st.Instance())
		}
		host, _ := os.Hostname()
		if id := st.Instance(); !strings.Contains(id, " pid="+strconv.Itoa(os.Getpid())+" ") || (host != "" && !strings.Contains(id, "host=")) {
			t.Errorf("Instance() = %q", id)
		}
		c, _ := st.Credential("c")
		h, err := c.TryLock(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Release(ctx)
		v, err := rdb.Get(ctx, "{"+p+"c}:lock").Result()
		if err != nil {
			t.Fatal(err)
		}
		if meta, ok := lock.MetadataOf(v); !ok || meta != st.Instance() {
			t.Errorf("lock holder = %q, %v; want %q", meta, ok, st.Instance())
		}
		oc, _ := other.Credential("c")
		if _, err := oc.TryLock(ctx); err == nil {
			t.Error("a second Cache obtained a held lock")
		}
	})
}
