package rediscache_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestReviewHugeRefreshGeneration: a :refresh hash whose generation is a
// decimal integer above 2^53, which Lua's doubles cannot count past
// exactly, passes LoadRefresh (any int64 does), so the Source redeems it;
// the commit script then writes tostring(tonumber(gen)+1), which is not
// gen+1 (real Redis: "9.007199254740992e+15"), beside a state sealed for
// gen+1. The upstream's new refresh token is in Redis but
// unreadable (ErrMalformed) and the one it replaced is spent: the
// authorization is lost, and (on real Redis) SeedRefresh is refused until
// someone deletes the key by hand. The token keys' scripts guard against
// this (plainint, plainorder); the refresh hash's do not. Either LoadRefresh should refuse such a generation
// before anything is redeemed, or the commit should store gen+1 exactly.
func TestReviewHugeRefreshGeneration(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		p := redistest.Prefix(t)
		hugeGeneration(t, rdb, p, "9007199254740993") // 2^53+1: a valid int64, not a double
	})
}

func hugeGeneration(t *testing.T, rdb redis.UniversalClient, p, gen string) {
	ctx := context.Background()
	c, err := rediscache.New(rdb, rediscache.Options{Prefix: p, Source: token.Options{Logger: quiet}})
	if err != nil {
		t.Fatal(err)
	}
	up := tokentest.NewRotating(time.Hour)
	rt := up.Authorize()
	_ = rdb.Del(ctx, "{"+p+"authorizer}:refresh").Err()
	if err := rdb.HSet(ctx, "{"+p+"authorizer}:refresh", "gen", gen, "v", "1|"+gen+"|1|"+rt).Err(); err != nil {
		t.Fatal(err)
	}
	cred, err := c.Credential("authorizer")
	if err != nil {
		t.Fatal(err)
	}
	s, err := token.NewSource("authorizer", up, cred, cred, token.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, terr := s.Token(ctx)
	if up.Redemptions() == 0 {
		return // refused before redeeming: nothing lost
	}
	st, err := cred.LoadRefresh(ctx)
	if err != nil {
		t.Errorf("Token: %v; then LoadRefresh: %v: the state the upstream issued for the redeemed one is unreadable", terr, err)
	} else if st.Value == rt {
		t.Errorf("the redeemed state %q is still stored", rt)
	}
	if err := s.SeedRefresh(ctx, up.Authorize()); err != nil {
		t.Errorf("SeedRefresh after that: %v (malformed: %v)", err, errors.Is(err, token.ErrMalformed))
	}
}
