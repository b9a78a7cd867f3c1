package rediscache

// Refresh state: {<prefix><name>}:refresh, a hash with no TTL: "gen", the
// generation (kept when the state is deleted, so that a later seed is newer
// than any before), and "v", the state, laid out as a token is (sealed with
// the Keyring, bound to the credential and the generation).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/token"
)

var (
	_ token.RefreshStore  = (*Credential)(nil)
	_ token.RotationSaver = (*Credential)(nil)
)

// refreshLifetime fills the layout's lifetime field, which refresh state
// does not have.
const refreshLifetime = time.Millisecond

func (c *Credential) refreshKey() string { return "{" + c.s.opts.Prefix + c.name + "}:refresh" }

func (c *Credential) encodeRefresh(gen int64, value string) (string, error) {
	if value == "" || len(value) > token.MaxTokenLen {
		return "", fmt.Errorf("rediscache: refresh state of %s: %d bytes: %w", c.name, len(value), token.ErrInvalidToken)
	}
	return c.s.codec.encode(c.name+":refresh", token.Shared{Value: value, Version: gen, Lifetime: refreshLifetime}), nil
}

// LoadRefresh implements token.RefreshStore.
func (c *Credential) LoadRefresh(ctx context.Context) (token.RefreshState, error) {
	c.s.checkDurabilityOnce(ctx)
	res, err := c.s.rdb.HMGet(ctx, c.refreshKey(), "gen", "v").Result()
	if err != nil {
		return token.RefreshState{}, fmt.Errorf("rediscache: load refresh state of %s: %w", c.name, err)
	}
	raw, _ := res[1].(string)
	if raw == "" {
		return token.RefreshState{}, fmt.Errorf("rediscache: %s: %w", c.name, token.ErrNoRefreshState)
	}
	gen, ok := parseVersion(res[0])
	version, _, value, derr := c.s.codec.decode(c.name+":refresh", raw)
	if !ok || gen == math.MaxInt64 || derr != nil || version != gen {
		// (A generation with no successor is not one this code wrote.)
		// Not ours, or sealed for another generation: never redeem it.
		return token.RefreshState{}, fmt.Errorf("rediscache: refresh state of %s: %w", c.name, token.ErrMalformed)
	}
	return token.RefreshState{Value: value, Generation: gen}, nil
}

// commitRefreshScript replaces the state of generation ARGV[1] with ARGV[2]
// as generation ARGV[3] (ARGV[1]+1, counted in Go: Lua's doubles are exact
// only up to 2^53), if that is still the stored one (1), or not (-1).
var commitRefreshScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 'v') == 0 then return -1 end
redis.call('HSET', KEYS[1], 'gen', ARGV[3], 'v', ARGV[2])
return 1
`)

// CommitRefresh implements token.RefreshStore.
func (c *Credential) CommitRefresh(ctx context.Context, gen int64, next string) error {
	v, err := c.encodeRefresh(gen+1, next)
	if err != nil {
		return err
	}
	ok, err := c.s.durable(ctx, commitRefreshScript, []string{c.refreshKey()}, strconv.FormatInt(gen, 10), v, strconv.FormatInt(gen+1, 10))
	switch {
	case err != nil:
		return fmt.Errorf("rediscache: commit refresh state of %s: %w", c.name, err)
	case ok < 0:
		return fmt.Errorf("rediscache: commit refresh state of %s generation %d: %w", c.name, gen, token.ErrFenced)
	}
	return nil
}

// saveRotatedScript is commitRefreshScript then saveScript, in one step:
// KEYS are the refresh hash, then saveScript's (one hash slot); ARGV[1..3]
// the generation, the next generation and the next state, then
// saveScript's ARGV. It returns -1 if the generation is no longer stored
// (nothing written), 0 if the state was committed but the token is fenced,
// 1 if both were written.
var saveRotatedScript = redis.NewScript(luaPrelude + `
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 'v') == 0 then return -1 end
redis.call('HSET', KEYS[1], 'gen', ARGV[2], 'v', ARGV[3])
fixfence(KEYS[3], KEYS[2])
local written = tonumber(redis.call('HGET', KEYS[3], 'written') or '0')
if tonumber(ARGV[4]) <= written then return 0 end
redis.call('HSET', KEYS[3], 'written', ARGV[4])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[3], 'id', ARGV[8]) end
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
redis.call('DEL', KEYS[4])
for i = 9, #ARGV do redis.call('PUBLISH', ARGV[i], ARGV[7]) end
return 1
`)

// SaveRotated implements token.RotationSaver.
func (c *Credential) SaveRotated(ctx context.Context, sh token.Shared, gen int64, next string) error {
	rv, err := c.encodeRefresh(gen+1, next)
	if err != nil {
		return err
	}
	v, ttl, err := c.encode("save", sh)
	if err != nil {
		return err
	}
	args, err := c.s.publishTo(ctx, []any{strconv.FormatInt(gen, 10), strconv.FormatInt(gen+1, 10), rv, sh.Version, v, ttl, formatEvent('r', sh.Version, c.name), fp(sh.Identity)})
	if err != nil {
		return fmt.Errorf("rediscache: save %s with its refresh state: %w", c.name, err)
	}
	res, err := c.s.durable(ctx, saveRotatedScript, []string{c.refreshKey(), c.token, c.fence, c.backoff}, args...)
	switch {
	case err != nil:
		return fmt.Errorf("rediscache: save %s with its refresh state: %w", c.name, err)
	case res < 0:
		return fmt.Errorf("rediscache: save %s: refresh state generation %d: %w", c.name, gen, token.ErrFenced)
	case res == 0:
		return fmt.Errorf("rediscache: save %s version %d (refresh state committed): %w", c.name, sh.Version, token.ErrFenced)
	}
	return nil
}

// seedRefreshScript stores ARGV[2] as generation ARGV[3] (ARGV[1]+1) if
// the stored generation is still ARGV[1] ("0": none) (1), or not (-1).
var seedRefreshScript = redis.NewScript(`
if (redis.call('HGET', KEYS[1], 'gen') or '0') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'gen', ARGV[3], 'v', ARGV[2])
return 1
`)

// SeedRefresh implements token.RefreshStore.
func (c *Credential) SeedRefresh(ctx context.Context, value string) (int64, error) {
	c.s.checkDurabilityOnce(ctx)
	// The sealed state is bound to its generation, so it is sealed before
	// the script: try again if a commit took the generation meanwhile.
	for range 5 {
		g, err := c.s.rdb.HGet(ctx, c.refreshKey(), "gen").Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return 0, fmt.Errorf("rediscache: seed refresh state of %s: %w", c.name, err)
		}
		gen, ok := parseVersion(g)
		if (!ok && g != "") || gen == math.MaxInt64 {
			return 0, fmt.Errorf("rediscache: seed refresh state of %s: generation: %w", c.name, token.ErrMalformed)
		}
		v, err := c.encodeRefresh(gen+1, value)
		if err != nil {
			return 0, err
		}
		n, err := c.s.durable(ctx, seedRefreshScript, []string{c.refreshKey()}, strconv.FormatInt(gen, 10), v, strconv.FormatInt(gen+1, 10))
		if err != nil {
			return 0, fmt.Errorf("rediscache: seed refresh state of %s: %w", c.name, err)
		}
		if n == 1 {
			return gen + 1, nil
		}
	}
	return 0, fmt.Errorf("rediscache: seed refresh state of %s: %w five times", c.name, token.ErrFenced)
}

// DeleteRefresh implements token.RefreshStore. The generation stays.
func (c *Credential) DeleteRefresh(ctx context.Context) error {
	if err := c.s.rdb.HDel(ctx, c.refreshKey(), "v").Err(); err != nil {
		return fmt.Errorf("rediscache: delete refresh state of %s: %w", c.name, err)
	}
	return nil
}

// canWait reports whether durable can hold one connection of rdb for a
// script and the WAIT after it.
func canWait(rdb redis.UniversalClient) bool {
	switch rdb.(type) {
	case *redis.Client, *redis.ClusterClient:
		return true
	}
	return false
}

// durable runs a script that writes refresh state to the hash keys[0], and
// returns a negative number if it wrote nothing. With RefreshReplicas it
// then waits, on the connection that ran the script, until that many
// replicas have the write.
func (s *Cache) durable(ctx context.Context, script *redis.Script, keys []string, args ...any) (int64, error) {
	if s.opts.RefreshReplicas <= 0 {
		return script.Run(ctx, s.rdb, keys, args...).Int64()
	}
	var conn *redis.Conn
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		node, err := c.MasterForKey(ctx, keys[0])
		if err != nil {
			return 0, err
		}
		conn = node.Conn()
	case *redis.Client:
		conn = c.Conn()
	}
	defer conn.Close()
	res, err := script.Run(ctx, conn, keys, args...).Int64()
	if err != nil || res < 0 {
		return res, err
	}
	n, err := conn.Wait(ctx, s.opts.RefreshReplicas, s.opts.RefreshReplicaTimeout).Result()
	if err != nil || n < int64(s.opts.RefreshReplicas) {
		s.log.Warn("tokencache: refresh state written on the primary, acknowledged by fewer replicas than RefreshReplicas",
			slog.Int64("replicas", n), slog.Int("want", s.opts.RefreshReplicas), slog.Any("error", err))
	}
	return res, nil
}
