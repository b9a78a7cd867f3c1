package main

import (
	"context"
	"sync"
	"time"

	"github.com/tokencache/tokencache/token"
)

// naiveCache is what most SDKs do: each process keeps its own token and
// refreshes it under a per-process mutex, and drops it when the API rejects
// it. Every instance then fetches on its own, and every fetch invalidates the
// token the other instances hold.
type naiveCache struct {
	f     token.Fetcher
	ahead time.Duration

	mu  sync.Mutex
	tok token.Token
}

func (n *naiveCache) Token(ctx context.Context) (token.Token, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.tok.Valid(time.Now().Add(n.ahead)) {
		return n.tok, nil
	}
	tok, err := n.f.Fetch(ctx)
	if err != nil {
		return token.Token{}, err
	}
	n.tok = tok
	return tok, nil
}

func (n *naiveCache) Invalidate(_ context.Context, bad string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.tok.Value == bad {
		n.tok = token.Token{}
	}
	return nil
}
