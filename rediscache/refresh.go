package rediscache

// Refresh state: {<prefix><name>}:refresh, a hash with no TTL: "gen", the
// generation (kept when the state is deleted, so that a later seed is newer
// than any before), and "v", the state, laid out as a token is (sealed with
// the Keyring, bound to the credential and the generation).

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/token"
)

var _ token.RefreshStore = (*Credential)(nil)

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
	if !ok || derr != nil || version != gen {
		// Not ours, or sealed for another generation: never redeem it.
		return token.RefreshState{}, fmt.Errorf("rediscache: refresh state of %s: %w", c.name, token.ErrMalformed)
	}
	return token.RefreshState{Value: value, Generation: gen}, nil
}

// commitRefreshScript replaces the state of generation ARGV[1] with ARGV[2]
// as generation ARGV[1]+1, if that is still the stored one (1), or not (0).
var commitRefreshScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 'v') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'gen', tostring(tonumber(ARGV[1]) + 1), 'v', ARGV[2])
return 1
`)

// CommitRefresh implements token.RefreshStore.
func (c *Credential) CommitRefresh(ctx context.Context, gen int64, next string) error {
	v, err := c.encodeRefresh(gen+1, next)
	if err != nil {
		return err
	}
	ok, err := commitRefreshScript.Run(ctx, c.s.rdb, []string{c.refreshKey()}, strconv.FormatInt(gen, 10), v).Int()
	switch {
	case err != nil:
		return fmt.Errorf("rediscache: commit refresh state of %s: %w", c.name, err)
	case ok == 0:
		return fmt.Errorf("rediscache: commit refresh state of %s generation %d: %w", c.name, gen, token.ErrFenced)
	}
	return nil
}

// seedRefreshScript stores ARGV[2] as generation ARGV[1]+1 if the stored
// generation is still ARGV[1] ("0": none).
var seedRefreshScript = redis.NewScript(`
if (redis.call('HGET', KEYS[1], 'gen') or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'gen', tostring(tonumber(ARGV[1]) + 1), 'v', ARGV[2])
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
		if !ok && g != "" {
			return 0, fmt.Errorf("rediscache: seed refresh state of %s: generation: %w", c.name, token.ErrMalformed)
		}
		v, err := c.encodeRefresh(gen+1, value)
		if err != nil {
			return 0, err
		}
		n, err := seedRefreshScript.Run(ctx, c.s.rdb, []string{c.refreshKey()}, strconv.FormatInt(gen, 10), v).Int()
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
