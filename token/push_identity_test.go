package token_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// TestOfferFromAnotherAccountIsRefused: the push analogue of
// rediscache's TestAnotherAccountIsRefused. App B, configured by mistake
// with app A's credential name, must not replace A's pushed ticket: a
// Source refuses the store's token of another account (ErrIdentityMismatch)
// and never fetches over it, but Offer checks no identity, so B's push
// overwrites A's ticket and its fence identity, and A's instances then
// refuse their own credential.
func TestOfferFromAnotherAccountIsRefused(t *testing.T) {
	st := tokentest.NewStore()
	mk := func(account string) *token.Source {
		f := token.WithIdentity(token.AwaitPush(nil), token.Identity{Account: account, Secret: []byte("secret-" + account)})
		s, err := token.NewSource("ticket", f, st, st, token.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := mk("wechat-open:wxAAAA"), mk("wechat-open:wxBBBB")
	ctx := context.Background()
	if ok, err := a.Offer(ctx, token.Push{Value: "ticket-of-A-0123456789", Order: 100, Lifetime: time.Hour}); !ok || err != nil {
		t.Fatalf("A's push: %v, %v", ok, err)
	}
	ok, err := b.Offer(ctx, token.Push{Value: "ticket-of-B-0123456789", Order: 200, Lifetime: time.Hour})
	if ok || !errors.Is(err, token.ErrIdentityMismatch) {
		t.Errorf("B's push over A's ticket: stored %v, %v; want refused with ErrIdentityMismatch", ok, err)
	}
	if sh, err := st.Load(ctx); err != nil || sh.Value != "ticket-of-A-0123456789" {
		t.Errorf("store holds %q, %v; want A's ticket", sh.Value, err)
	}
	// A second instance of app A, starting now, must get A's ticket.
	a2 := mk("wechat-open:wxAAAA")
	if tok, err := a2.Token(ctx); err != nil || tok.Value != "ticket-of-A-0123456789" {
		t.Errorf("A's new instance: %v, %v; want A's ticket", tok, err)
	}
}
