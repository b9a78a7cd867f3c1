package lock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tokencache/tokencache/lock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clients returns a client of miniredis and, if TOKENCACHE_REDIS_ADDR is set,
// of that real server.
func clients(t *testing.T) map[string]*redis.Client {
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	cs := map[string]*redis.Client{"miniredis": redis.NewClient(&redis.Options{Addr: mr.Addr()})}
	if addr := os.Getenv("TOKENCACHE_REDIS_ADDR"); addr != "" {
		cs["redis"] = redis.NewClient(&redis.Options{Addr: addr})
	}
	for _, c := range cs {
		t.Cleanup(func() { _ = c.Close() })
	}
	return cs
}

func key(t *testing.T) string {
	return "locktest:" + t.Name() + ":" + time.Now().Format(time.RFC3339Nano)
}

func TestTryObtainIsExclusive(t *testing.T) {
	for name, rdb := range clients(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c, k := lock.New(rdb), key(t)
			l, err := c.TryObtain(ctx, k, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.TryObtain(ctx, k, time.Second); !errors.Is(err, lock.ErrNotObtained) {
				t.Fatalf("second TryObtain: %v, want ErrNotObtained", err)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatalf("second Release: %v", err)
			}
			if l.Context().Err() == nil {
				t.Error("context still live after Release")
			}
			l2, err := c.TryObtain(ctx, k, time.Second)
			if err != nil {
				t.Fatalf("TryObtain after Release: %v", err)
			}
			_ = l2.Release(ctx)
		})
	}
}

func TestKeepAliveOutlivesTTL(t *testing.T) {
	for name, rdb := range clients(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c, k := lock.New(rdb), key(t)
			const ttl = 90 * time.Millisecond
			l, err := c.TryObtain(ctx, k, ttl)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Release(ctx)
			// Hold it for several TTLs: it must not be obtainable meanwhile.
			deadline := time.Now().Add(5 * ttl)
			for time.Now().Before(deadline) {
				if _, err := c.TryObtain(ctx, k, ttl); !errors.Is(err, lock.ErrNotObtained) {
					t.Fatalf("lock taken while kept alive: %v", err)
				}
				time.Sleep(ttl / 4) // sampling over time is the point here
			}
			if err := l.Context().Err(); err != nil {
				t.Fatalf("lock context ended: %v", context.Cause(l.Context()))
			}
		})
	}
}

func TestLostLockCancelsContext(t *testing.T) {
	for name, rdb := range clients(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c, k := lock.New(rdb), key(t)
			l, err := c.TryObtain(ctx, k, 60*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if err := rdb.Set(ctx, k, "someone-else", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-l.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatal("lost lock not noticed")
			}
			if cause := context.Cause(l.Context()); !errors.Is(cause, lock.ErrLost) {
				t.Errorf("cause = %v, want ErrLost", cause)
			}
			if err := l.Release(ctx); !errors.Is(err, lock.ErrLost) {
				t.Errorf("Release = %v, want ErrLost", err)
			}
			if v, _ := rdb.Get(ctx, k).Result(); v != "someone-else" {
				t.Errorf("Release removed another holder's lock")
			}
		})
	}
}

func TestTooShortTTL(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	c := lock.New(rdb)
	if _, err := c.TryObtain(context.Background(), "k", time.Millisecond); err == nil {
		t.Fatal("1ms TTL accepted")
	}
}

func ExampleClient_TryObtain() {
	mr := miniredis.NewMiniRedis()
	_ = mr.Start()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	locks := lock.New(rdb)
	l, err := locks.TryObtain(context.Background(), "refresh:wechat", 10*time.Second)
	if errors.Is(err, lock.ErrNotObtained) {
		return // someone else is refreshing
	}
	if err != nil {
		panic(err)
	}
	defer l.Release(context.Background())
	// Work under l.Context(): it ends if the lock is lost.
	fmt.Println(l.Key(), l.Context().Err())
	// Output: refresh:wechat <nil>
}

// TestLostBeforeExpiry: when Redis stops answering, the holder gives the lock
// up before its TTL runs out, so it stops before anyone else can start.
func TestLostBeforeExpiry(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	const ttl = 200 * time.Millisecond
	l, err := lock.New(rdb).TryObtain(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	obtained := time.Now()
	mr.SetError("LOADING Redis is loading the dataset in memory")
	<-l.Context().Done()
	if held := time.Since(obtained); held >= ttl {
		t.Errorf("lock given up after %v, want before its TTL %v", held, ttl)
	}
	if !errors.Is(context.Cause(l.Context()), lock.ErrLost) {
		t.Errorf("cause = %v", context.Cause(l.Context()))
	}
	mr.SetError("")
	if err := l.Release(ctx); !errors.Is(err, lock.ErrLost) {
		t.Errorf("Release = %v, want ErrLost", err)
	}
	if mr.Exists("k") {
		t.Error("Release after a loss left the key behind")
	}
}

// TestMetadata: the metadata is stored after the random token, read back
// with MetadataOf, kept by the keep-alive and released with the lock, and
// it never lets a second holder in, even with the same metadata or a value
// that shares it.
func TestMetadata(t *testing.T) {
	for name, rdb := range clients(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c, k := lock.New(rdb), key(t)
			const meta = "host=web-1 pid=42 cache=0123abcd"
			l, err := c.TryObtain(ctx, k, 80*time.Millisecond, lock.WithMetadata(meta))
			if err != nil {
				t.Fatal(err)
			}
			if l.Metadata() != meta {
				t.Errorf("Metadata() = %q", l.Metadata())
			}
			v, err := rdb.Get(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if got, ok := lock.MetadataOf(v); !ok || got != meta {
				t.Errorf("MetadataOf(stored) = %q, %v; want %q", got, ok, meta)
			}
			if _, err := c.TryObtain(ctx, k, time.Second, lock.WithMetadata(meta)); !errors.Is(err, lock.ErrNotObtained) {
				t.Fatalf("TryObtain with the holder's metadata: %v, want ErrNotObtained", err)
			}
			// Outlive the TTL: refreshes compare the whole value.
			time.Sleep(200 * time.Millisecond) // several TTLs: the keep-alive must refresh
			if err := l.Context().Err(); err != nil {
				t.Fatalf("lock with metadata lost: %v", context.Cause(l.Context()))
			}
			if err := l.Release(ctx); err != nil {
				t.Fatalf("Release: %v", err)
			}
			if n, _ := rdb.Exists(ctx, k).Result(); n != 0 {
				t.Error("Release left the key")
			}
			// A foreign value whose tail is our metadata is not ours.
			if err := rdb.Set(ctx, k, "AAAAAAAAAAAAAAAAAAAAAA"+meta, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.TryObtain(ctx, k, time.Second, lock.WithMetadata(meta)); !errors.Is(err, lock.ErrNotObtained) {
				t.Fatalf("TryObtain over a foreign value with our metadata: %v, want ErrNotObtained", err)
			}
		})
	}
}

func TestMetadataRefused(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	c := lock.New(rdb)
	for _, meta := range []string{"a\nb", "\x00", "é", string(make([]byte, lock.MaxMetadataLen+1))} {
		if _, err := c.TryObtain(context.Background(), "k", time.Second, lock.WithMetadata(meta)); err == nil || errors.Is(err, lock.ErrNotObtained) {
			t.Errorf("metadata %q: %v, want a refusal before any I/O", meta, err)
		}
	}
}

func TestMetadataOf(t *testing.T) {
	tok := "abcdefghijklmnopqrstu-"
	for _, tc := range []struct {
		value, meta string
		ok          bool
	}{
		{tok, "", true},
		{tok + "host=a pid=1", "host=a pid=1", true},
		{"short", "", false},
		{"abcdefghijklmnopqrstu!" + "x", "", false}, // not a redislock token
		{tok + "x\ny", "", false},
		{tok + string(make([]byte, lock.MaxMetadataLen+1)), "", false},
	} {
		meta, ok := lock.MetadataOf(tc.value)
		if meta != tc.meta || ok != tc.ok {
			t.Errorf("MetadataOf(%q) = %q, %v; want %q, %v", tc.value, meta, ok, tc.meta, tc.ok)
		}
	}
}
