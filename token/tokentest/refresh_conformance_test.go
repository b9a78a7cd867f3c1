package tokentest_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// memRefresh is a reference token.RefreshStore: one credential's state
// under a mutex. Its generation survives DeleteRefresh, so that a seed
// after a delete is newer than any state before. It has no clock: nothing
// expires.
type memRefresh struct {
	mu    sync.Mutex
	value string
	has   bool
	gen   int64 // the newest generation stored, kept after a delete
}

func (m *memRefresh) LoadRefresh(context.Context) (token.RefreshState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.has {
		return token.RefreshState{}, token.ErrNoRefreshState
	}
	return token.RefreshState{Value: m.value, Generation: m.gen}, nil
}

func (m *memRefresh) CommitRefresh(_ context.Context, gen int64, next string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.has || gen != m.gen {
		return token.ErrFenced
	}
	m.value, m.gen = next, gen+1
	return nil
}

func (m *memRefresh) SeedRefresh(_ context.Context, value string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.value, m.has = value, true
	m.gen++
	return m.gen, nil
}

func (m *memRefresh) DeleteRefresh(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.value, m.has = "", false
	return nil
}

// TestRefreshStoreConformance runs the suite on the reference store:
// handles share it by pointer. Advance does nothing, as memRefresh keeps
// no time, so NoExpiry runs.
func TestRefreshStoreConformance(t *testing.T) {
	tokentest.TestRefreshStore(t, tokentest.RefreshHarness{
		New: func(t *testing.T) tokentest.RefreshCredential {
			m := &memRefresh{}
			return tokentest.RefreshCredential{Open: func() token.RefreshStore { return m }}
		},
		Advance: func(time.Duration) {},
	})
}

// brokenRefresh breaks one rule of the contract, for TestRefreshStoreCatches.
type brokenRefresh struct {
	memRefresh
	breaks string
}

func (b *brokenRefresh) CommitRefresh(ctx context.Context, gen int64, next string) error {
	b.mu.Lock()
	switch b.breaks {
	case "no fence": // a last-writer-wins store
		b.value, b.gen, b.has = next, gen+1, true
		b.mu.Unlock()
		return nil
	case "check then act": // reads, unlocks, then writes: a lost update
		ok := b.has && gen == b.gen
		b.mu.Unlock()
		if !ok {
			return token.ErrFenced
		}
		time.Sleep(time.Millisecond)
		b.mu.Lock()
		b.value, b.gen = next, gen+1
		b.mu.Unlock()
		return nil
	}
	b.mu.Unlock()
	return b.memRefresh.CommitRefresh(ctx, gen, next)
}

func (b *brokenRefresh) SeedRefresh(ctx context.Context, value string) (int64, error) {
	if b.breaks == "generation restarts" { // forgets generations on delete
		b.mu.Lock()
		defer b.mu.Unlock()
		if !b.has {
			b.gen = 0
		}
		b.value, b.has = value, true
		b.gen++
		return b.gen, nil
	}
	return b.memRefresh.SeedRefresh(ctx, value)
}

func (b *brokenRefresh) LoadRefresh(ctx context.Context) (token.RefreshState, error) {
	st, err := b.memRefresh.LoadRefresh(ctx)
	if b.breaks == "truncates" && len(st.Value) > 1024 {
		st.Value = st.Value[:1024]
	}
	return st, err
}

// brokenEnv names the broken store TestBrokenRefreshStore runs the suite
// on; it is set only in the process TestRefreshStoreCatches starts.
const brokenEnv = "TOKENTEST_BROKEN_REFRESH"

// TestBrokenRefreshStore runs the suite on the brokenRefresh that brokenEnv
// names, in a process of its own: it is meant to fail.
func TestBrokenRefreshStore(t *testing.T) {
	breaks := os.Getenv(brokenEnv)
	if breaks == "" {
		t.Skip("run by TestRefreshStoreCatches")
	}
	tokentest.TestRefreshStore(t, tokentest.RefreshHarness{
		New: func(t *testing.T) tokentest.RefreshCredential {
			b := &brokenRefresh{breaks: breaks}
			return tokentest.RefreshCredential{Open: func() token.RefreshStore { return b }}
		},
	})
}

// TestRefreshStoreCatches checks that the suite fails stores that break
// the contract, each in one way, in the subtest that checks that rule.
func TestRefreshStoreCatches(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skipf("cannot run the test binary again: %v", err)
	}
	for _, tc := range []struct{ breaks, subtest string }{
		{"no fence", "Commit"},
		{"check then act", "ConcurrentCommits"},
		{"generation restarts", "Delete"},
		{"truncates", "Values"},
	} {
		t.Run(tc.breaks, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), exe, "-test.run=^TestBrokenRefreshStore$/^"+tc.subtest+"$", "-test.v")
			cmd.Env = append(os.Environ(), brokenEnv+"="+tc.breaks)
			out, err := cmd.CombinedOutput()
			want := "--- FAIL: TestBrokenRefreshStore/" + tc.subtest + " "
			if err == nil || !strings.Contains(string(out), want) {
				t.Errorf("TestRefreshStore on a store that breaks the contract (%s): %v, want a failure of %s; output:\n%s",
					tc.breaks, err, tc.subtest, out)
			}
		})
	}
}

// TestStoreRefreshConformance runs the suite on tokentest.Store, which is
// also a token.RotationSaver: SaveRotated runs.
func TestStoreRefreshConformance(t *testing.T) {
	tokentest.TestRefreshStore(t, tokentest.RefreshHarness{
		New: func(t *testing.T) tokentest.RefreshCredential {
			st := tokentest.NewStore()
			return tokentest.RefreshCredential{Open: func() token.RefreshStore { return st }}
		},
		Advance: func(time.Duration) {},
	})
}
