package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// status is one credential's state. It holds versions, lifetimes, counts
// and fingerprints: never a token, a refresh token or an error message.
type status struct {
	Name    string        `json:"name"`
	Prefix  string        `json:"prefix"`
	Token   *tokenState   `json:"token"`
	Fence   *fenceState   `json:"fence"`
	Lock    *lockState    `json:"lock"`
	Backoff *backoffState `json:"backoff"`
	Order   *orderState   `json:"order"`
	Refresh *refreshState `json:"refresh"`
	Limits  []limitState  `json:"limits"`
	// LimitsProblem says why limiters were not looked for (a timeout on a
	// large keyspace, an ACL without +scan).
	LimitsProblem string `json:"limits_problem,omitempty"`
}

// tokenState is the {…}:token key. TTLMS is its PTTL (-1: no expiry).
type tokenState struct {
	Problem     string `json:"problem,omitempty"` // not rediscache's: why
	Sealed      bool   `json:"sealed"`
	KeyID       string `json:"key_id,omitempty"`
	Version     int64  `json:"version,omitempty"`
	TTLMS       int64  `json:"ttl_ms"`
	LifetimeMS  int64  `json:"lifetime_ms,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"` // of a clear token only
}

// fenceState is the {…}:fence hash; Identity is the fingerprint of the
// account the token was fetched for.
type fenceState struct {
	Problem     string `json:"problem,omitempty"`
	Written     int64  `json:"written"`
	Next        int64  `json:"next"`
	Invalidated int64  `json:"invalidated"`
	Identity    string `json:"identity,omitempty"`
}

// lockState is the refresh lock; Holder is its metadata (rediscache's
// Cache.Instance), empty for a holder of an older release.
type lockState struct {
	Problem string `json:"problem,omitempty"`
	Holder  string `json:"holder"`
	TTLMS   int64  `json:"ttl_ms"`
}

// backoffState is the shared backoff record; RemainingMS is on the
// server's clock.
type backoffState struct {
	Problem     string `json:"problem,omitempty"`
	Failures    int64  `json:"failures"`
	RemainingMS int64  `json:"remaining_ms"`
	Class       string `json:"class,omitempty"`
	Code        string `json:"code,omitempty"`
	Identity    string `json:"identity,omitempty"`
}

// orderState is the issuer's order of the last pushed value.
type orderState struct {
	Problem string `json:"problem,omitempty"`
	Order   int64  `json:"order"`
	TTLMS   int64  `json:"ttl_ms"`
}

// refreshState says whether a rotating refresh state is stored, and its
// generation; never the state.
type refreshState struct {
	Problem    string `json:"problem,omitempty"`
	Present    bool   `json:"present"`
	Generation int64  `json:"generation"`
}

// limitState is one Limiter's count: Day is the limiter's day (its
// DayOffset applied) as a date.
type limitState struct {
	Action    string `json:"action"`
	Problem   string `json:"problem,omitempty"`
	Count     int64  `json:"count"`
	Day       string `json:"day,omitempty"`
	LastAgoMS int64  `json:"last_ago_ms,omitempty"`
}

func (s *status) empty() bool {
	return s.Token == nil && s.Fence == nil && s.Lock == nil && s.Backoff == nil &&
		s.Order == nil && s.Refresh == nil && len(s.Limits) == 0
}

// runStatus prints one credential's state.
func runStatus(ctx context.Context, cfg *config, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	pos, code, ok := commandFlags(cfg, "status", "[-json] NAME", args, stderr, 1, 1, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	})
	if !ok {
		return code
	}
	name := pos[0]
	if err := checkName(name); err != nil {
		fmt.Fprintf(stderr, "tokencache status: %v\n", err)
		return exitError
	}
	c, code := connect(ctx, cfg, stderr)
	if c == nil {
		return code
	}
	defer c.rdb.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	st, err := gather(ctx, c, cfg.prefix, name)
	if err != nil {
		fmt.Fprintf(stderr, "tokencache status: %s on %s: %v\n", name, c.addr, err)
		return exitError
	}
	if st.empty() {
		fmt.Fprintf(stderr, "tokencache: no keys for credential %q under prefix %q on %s\n", name, cfg.prefix, c.addr)
		return exitNothing
	}
	if asJSON {
		return writeJSON(stdout, stderr, st)
	}
	return printStatus(stdout, stderr, st)
}

// reads are the commands of one status, pipelined on the server of the
// credential's slot.
type reads struct {
	tok, lock, order keyRead
	fence, backoff   *redis.MapStringStringCmd
	refGen           *redis.StringCmd
	refHas           *redis.BoolCmd
	now              *redis.TimeCmd
}

// keyRead is a string key's value and remaining time to live.
type keyRead struct {
	get *redis.StringCmd
	ttl *redis.DurationCmd
}

func readKey(ctx context.Context, p redis.Pipeliner, key string) keyRead {
	return keyRead{get: p.Get(ctx, key), ttl: p.PTTL(ctx, key)}
}

// gather reads the credential's keys: one pipeline, then a SCAN for its
// limiters. It reads only; nothing is repaired or removed.
func gather(ctx context.Context, c *conn, prefix, name string) (*status, error) {
	t := tag(prefix, name)
	node, err := c.nodeFor(ctx, t+":token")
	if err != nil {
		return nil, err
	}
	p := node.Pipeline()
	r := reads{
		tok:     readKey(ctx, p, t+":token"),
		fence:   p.HGetAll(ctx, t+":fence"),
		lock:    readKey(ctx, p, t+":lock"),
		backoff: p.HGetAll(ctx, t+":backoff"),
		order:   readKey(ctx, p, t+":order"),
		refGen:  p.HGet(ctx, t+":refresh", "gen"), refHas: p.HExists(ctx, t+":refresh", "v"),
		now: p.Time(ctx),
	}
	cmds, _ := p.Exec(ctx) // each command's error is looked at below
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) && !isWrongType(err) {
			return nil, fmt.Errorf("%s: %w", cmd.Name(), err)
		}
	}
	now := r.now.Val()
	st := &status{Name: name, Prefix: prefix}
	st.Token = tokenOf(r.tok.get, r.tok.ttl)
	st.Fence = fenceOf(r.fence)
	st.Lock = lockOf(r.lock.get, r.lock.ttl)
	st.Backoff = backoffOf(r.backoff, now)
	st.Order = orderOf(r.order.get, r.order.ttl)
	st.Refresh = refreshOf(r.refGen, r.refHas)
	st.Limits, err = limits(ctx, node, prefix, name, now)
	if err != nil {
		st.LimitsProblem = "not looked for: " + err.Error()
	}
	return st, nil
}

func isWrongType(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") }

// maxLimits bounds how many limiters of one credential are shown.
const maxLimits = 64

// limits finds the credential's limiters ({…}:limit:<action>) by SCAN on
// the server of its slot, and reads each count.
func limits(ctx context.Context, node redis.Cmdable, prefix, name string, now time.Time) ([]limitState, error) {
	match := "{" + globEscape(prefix+name) + "}:limit:*"
	var keys []string
	var cursor uint64
	for len(keys) < maxLimits {
		batch, next, err := node.Scan(ctx, cursor, match, scanCount).Result()
		if err != nil {
			return nil, err
		}
		keys = append(keys, batch...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	var out []limitState
	for _, k := range keys[:min(len(keys), maxLimits)] {
		n, kind, ok := splitKey(prefix, k)
		if !ok || n != name {
			continue
		}
		h, err := node.HGetAll(ctx, k).Result()
		if err != nil && !isWrongType(err) {
			return nil, err
		}
		out = append(out, limitOf(strings.TrimPrefix(kind, "limit:"), h, err, now))
	}
	return out, nil
}
