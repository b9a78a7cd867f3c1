package token_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

func ExampleNewSource() {
	// tokentest.Store stands in for a shared store; use package rediscache
	// in production.
	shared := tokentest.NewStore()
	f := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
		return token.Token{Value: "0123456789abcdef-token", ExpiresAt: time.Now().Add(time.Hour)}, nil
	})
	a, err := token.NewSource("partner-api", f, shared, shared, token.Options{})
	if err != nil {
		panic(err)
	}
	defer a.Close()
	b, _ := token.NewSource("partner-api", f, shared, shared, token.Options{})
	defer b.Close()

	ta, _ := a.Token(context.Background())
	tb, _ := b.Token(context.Background()) // read from the shared store, not fetched
	fmt.Println(ta.Value == tb.Value)
	fmt.Printf("%v\n", token.Token{Value: ta.Value}) // printing a Token redacts it
	// Output:
	// true
	// token.Token{Value:0123…[22 chars], ExpiresAt:0001-01-01T00:00:00Z}
}

// An upstream that, like WeChat's access_token endpoint, accepts only the
// token it issued last.
type strictUpstream struct {
	mu      sync.Mutex
	issued  int
	current string
}

func (u *strictUpstream) fetch() token.Token {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.issued++
	u.current = fmt.Sprintf("ACCESS_TOKEN_%d_0123456789", u.issued)
	return token.Token{Value: u.current, ExpiresAt: time.Now().Add(2 * time.Hour)}
}

// call stands for an API call: errcode 0, or 40001 for a token that is not
// the latest.
func (u *strictUpstream) call(tok string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if tok != u.current {
		return 40001
	}
	return 0
}

func ExampleSource_Invalidate() {
	up := &strictUpstream{}
	var fetches atomic.Int32
	f := token.FetcherFunc(func(ctx context.Context) (token.Token, error) {
		fetches.Add(1)
		return up.fetch(), nil
	})
	// Two instances sharing one store (rediscache in production).
	shared := tokentest.NewStore()
	var instances []*token.Source
	for range 2 {
		s, err := token.NewSource("wechat:wx1234", f, shared, shared, token.Options{})
		if err != nil {
			panic(err)
		}
		defer s.Close()
		instances = append(instances, s)
	}
	ctx := context.Background()
	tok, _ := instances[0].Token(ctx)
	fmt.Println("errcode", up.call(tok.Value))

	// A thousand callers on both instances hold that token when someone
	// else fetches one with the same AppSecret, which kills ours.
	held := make([]token.Token, 1000)
	for i := range held {
		held[i], _ = instances[i%2].Token(ctx)
	}
	up.fetch()

	// Each gets errcode 40001, reports the token, and retries with the next
	// one. Only the first report of a token counts: the cluster fetches once.
	var wg sync.WaitGroup
	var retried atomic.Int32
	for i, tok := range held {
		wg.Go(func() {
			s := instances[i%2]
			if up.call(tok.Value) != 40001 {
				return
			}
			_ = s.Invalidate(ctx, tok.Value)
			tok, err := s.Token(ctx) // waits for the new token
			if err == nil && up.call(tok.Value) == 0 {
				retried.Add(1)
			}
		})
	}
	wg.Wait()
	fmt.Println(retried.Load(), "callers got 40001 and succeeded on retry")
	fmt.Println(fetches.Load(), "fetches by the cluster")
	// Output:
	// errcode 0
	// 1000 callers got 40001 and succeeded on retry
	// 2 fetches by the cluster
}

func ExampleOptions_backoffPolicy() {
	// Wait 30 s after any failure, and an hour after one that retrying
	// cannot fix (an error with a Permanent() bool method that returns true,
	// such as a wrong AppSecret). The wait is shared by every instance.
	policy := func(err error, failures int) time.Duration {
		if class, _ := token.Classify(err); class == token.ClassPermanent {
			return time.Hour
		}
		return 30 * time.Second
	}
	opts := token.Options{BackoffPolicy: policy}

	fmt.Println(opts.BackoffPolicy(errors.New("connection reset"), 1))
	fmt.Println(opts.BackoffPolicy(errors.New("connection reset"), 5))
	fmt.Println(opts.BackoffPolicy(wrongSecret{}, 1))

	// In use: the first Token call gets the fetch's error; until the wait
	// ends, callers on every instance get a *token.BackoffError without a
	// fetch.
	shared := tokentest.NewStore()
	fetches := 0
	src, err := token.NewSource("wechat:wx1234", token.FetcherFunc(func(context.Context) (token.Token, error) {
		fetches++
		return token.Token{}, wrongSecret{}
	}), shared, shared, token.Options{BackoffPolicy: policy, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	defer src.Close()
	_, err = src.Token(context.Background())
	fmt.Println(err)
	_, err = src.Token(context.Background())
	var be *token.BackoffError
	if errors.As(err, &be) {
		fmt.Printf("failures=%d class=%s code=%s wait=%v fetches=%d\n",
			be.Failures, be.Class, be.Code, be.Remaining.Round(time.Minute), fetches)
	}
	// Output:
	// 30s
	// 30s
	// 1h0m0s
	// token: wechat:wx1234: fetch: invalid appsecret
	// failures=1 class=permanent code=40125 wait=1h0m0s fetches=1
}

// wrongSecret is an upstream error that retrying cannot fix.
type wrongSecret struct{}

func (wrongSecret) Error() string     { return "invalid appsecret" }
func (wrongSecret) Permanent() bool   { return true }
func (wrongSecret) ErrorCode() string { return "40125" }
