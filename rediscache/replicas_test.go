package rediscache_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
)

// warnings records the messages of warnings logged.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

func (w *warnings) count(substr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// TestRefreshReplicas: with RefreshReplicas, refresh state writes wait for
// the replicas (WAIT on the writing connection). The Sentinel topology has
// one replica: waiting for 1 succeeds quietly, waiting for 2 keeps the
// write on the primary and warns after RefreshReplicaTimeout. Neither
// changes what is stored.
func TestRefreshReplicas(t *testing.T) {
	b, ok := redistest.SentinelBackend()
	if !ok {
		t.Skip("needs the Sentinel topology (primary and one replica)")
	}
	for _, tc := range []struct {
		replicas int
		warn     bool
	}{{1, false}, {2, true}} {
		t.Run(strings.Repeat("r", tc.replicas), func(t *testing.T) {
			w := &warnings{}
			p := prefix(t)
			c := newCache(t, b.Client(t), rediscache.Options{
				Prefix: p, RefreshReplicas: tc.replicas, RefreshReplicaTimeout: 200 * time.Millisecond,
				Source: token.Options{Logger: slog.New(w)},
			})
			cr, err := c.Credential("replicated")
			if err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			g, err := cr.SeedRefresh(ctx, "refresh-1")
			if err != nil {
				t.Fatal(err)
			}
			if err := cr.CommitRefresh(ctx, g, "refresh-2"); err != nil {
				t.Fatal(err)
			}
			v, err := cr.NextVersion(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sh := token.Shared{Value: "token-1", Version: v, TTL: time.Minute, Lifetime: time.Minute}
			if err := cr.SaveRotated(ctx, sh, g+1, "refresh-3"); err != nil {
				t.Fatal(err)
			}
			if !tc.warn {
				// Acknowledged by the replica before SaveRotated returned.
				replica := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: b.Master, SentinelAddrs: b.Sentinels, ReplicaOnly: true})
				defer replica.Close()
				key := "{" + p + "replicated}:refresh"
				if gen, err := replica.HGet(ctx, key, "gen").Result(); err != nil || gen != strconv.FormatInt(g+2, 10) {
					t.Errorf("the replica holds generation %q (%v) right after SaveRotated, want %d", gen, err, g+2)
				}
			}
			if err := cr.CommitRefresh(ctx, g, "secret-stale"); !errors.Is(err, token.ErrFenced) {
				t.Errorf("stale commit: %v, want ErrFenced", err)
			}
			if st, err := cr.LoadRefresh(ctx); err != nil || st.Value != "refresh-3" || st.Generation != g+2 {
				t.Errorf("LoadRefresh = %d, %v; want refresh-3 at generation %d", st.Generation, err, g+2)
			}
			// Three writes; the fenced commit wrote nothing and waits for
			// nothing.
			want := 0
			if tc.warn {
				want = 3
			}
			if n := w.count("fewer replicas"); n != want {
				t.Errorf("%d warnings about replicas, want %d", n, want)
			}
		})
	}
}

// TestRefreshReplicasNeedsOneConnection: WAIT counts the writes of the
// connection it is sent on, so RefreshReplicas needs a client that can
// hand out one connection: a wrapped client is refused by New, not by the
// first write.
func TestRefreshReplicasNeedsOneConnection(t *testing.T) {
	type wrapped struct{ *redis.Client }
	rdb := wrapped{redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})}
	defer rdb.Close()
	if _, err := rediscache.New(rdb, rediscache.Options{RefreshReplicas: 1}); !errors.Is(err, token.ErrInvalidConfig) {
		t.Errorf("New(wrapped client, RefreshReplicas 1): %v, want ErrInvalidConfig", err)
	}
	if _, err := rediscache.New(rdb, rediscache.Options{}); err != nil {
		t.Errorf("New(wrapped client) without RefreshReplicas: %v", err)
	}
}
