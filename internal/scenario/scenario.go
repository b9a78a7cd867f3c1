// Package scenario holds the behaviour tests of token.Source that do not
// depend on the store behind it, and the helpers its tests share. Each
// scenario is written once and run by package token on the in-memory
// tokentest.Store (in a testing/synctest bubble where time is the subject)
// and by package rediscache on miniredis and the real Redis topologies.
//
// A scenario takes a Backend, which makes the instances of one credential.
// Scenarios use only the clock of the goroutine that runs them, so that one
// run inside a synctest bubble is deterministic.
package scenario

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
)

// Backend makes the instances of one credential that a scenario runs on.
type Backend struct {
	// NewSource returns instance i's Source of the credential, fetching
	// with f and configured with o, closed when the test ends. The
	// instances share one store, as processes that share Redis do.
	NewSource func(t *testing.T, i int, f token.Fetcher, o token.Options) *token.Source
	// Store is the credential's shared store, for a test's own reads and
	// writes (another instance's save, a check of what is stored).
	Store token.Store
	// Options are the backend's options for tests: short polls.
	Options token.Options
	// Think is the pause between one load goroutine's calls.
	Think time.Duration
	// MaxStale bounds how long after its replacement a token may still be
	// handed out under load: the notification latency, with slack for a
	// loaded machine.
	MaxStale time.Duration
}

// Sources returns n instances (numbered from 0) fetching with f.
func (b Backend) Sources(t *testing.T, n int, f token.Fetcher, o token.Options) []*token.Source {
	t.Helper()
	srcs := make([]*token.Source, n)
	for i := range srcs {
		srcs[i] = b.NewSource(t, i, f, o)
	}
	return srcs
}

// Save writes value as the newest token, an hour long, as another
// instance's refresh does, and returns what it wrote.
func Save(t testing.TB, st token.TokenStore, value string) token.Shared {
	t.Helper()
	ctx := context.Background()
	v, err := st.NextVersion(ctx)
	if err != nil {
		t.Fatalf("NextVersion: %v", err)
	}
	sh := token.Shared{Value: value, Version: v, TTL: time.Hour, Lifetime: time.Hour}
	if err := st.Save(ctx, sh); err != nil {
		t.Fatalf("Save: %v", err)
	}
	return sh
}

// Retry calls try until it reports true, pausing pace between calls as a
// caller trying again does, and reports whether it did within timeout. In
// a synctest bubble the pauses advance the fake clock.
func Retry(timeout, pace time.Duration, try func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for !try() {
		if !time.Now().Before(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// Logs collects a logger's JSON lines; it is safe for concurrent use.
type Logs struct {
	mu sync.Mutex
	b  []byte
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// Logger returns a JSON logger that writes to l.
func (l *Logs) Logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// Count counts the lines at level whose message contains substr.
func (l *Logs) Count(level, substr string) int { return CountLogs(l.String(), level, substr) }

// CountLogs counts the JSON log lines of out at level whose message
// contains substr.
func CountLogs(out, level, substr string) int {
	n := 0
	for line := range strings.Lines(out) {
		var rec struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Level == level && strings.Contains(rec.Msg, substr) {
			n++
		}
	}
	return n
}

// Secret is the secret that SecretError's message holds.
const Secret = "S3CRET-0123456789abcdef"

// SecretError is a permanent fetcher error with an upstream code whose
// message holds a secret, as a *url.Error with the secret in its query
// string does.
type SecretError struct{}

func (SecretError) Error() string {
	return `Get "https://api.example.com/token?appid=wx1&secret=` + Secret + `": 40125 invalid appsecret`
}
func (SecretError) Permanent() bool   { return true }
func (SecretError) ErrorCode() string { return "40125" }
