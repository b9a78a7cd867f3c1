package wechat

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/tokencache/tokencache/token"
)

// TokenSource is the access-token source the ticket fetcher and Transport
// use: a *token.Source.
type TokenSource interface {
	// Token returns a valid access token.
	Token(ctx context.Context) (token.Token, error)
	// Invalidate reports that WeChat rejected the access token bad.
	Invalidate(ctx context.Context, bad string) error
}

// Ticket types.
const (
	TicketJSAPI  = "jsapi"
	TicketWXCard = "wx_card"
)

// TicketFetcher fetches a jsapi_ticket (or wx_card ticket), a second shared
// credential that depends on the access token:
//
//	GET /cgi-bin/ticket/getticket?access_token=ACCESS_TOKEN&type=jsapi
//
// If WeChat rejects the access token (40001, 40014, 42001), the fetcher
// invalidates it and retries once with the new one.
type TicketFetcher struct {
	// Tokens supplies the access token the ticket is fetched with.
	Tokens TokenSource
	// Type defaults to TicketJSAPI.
	Type string
	// BaseURL defaults to DefaultBaseURL.
	BaseURL string
	// HTTPClient defaults to http.DefaultClient.
	HTTPClient *http.Client
}

// Fetch implements token.Fetcher.
func (f *TicketFetcher) Fetch(ctx context.Context) (token.Token, error) {
	typ := f.Type
	if typ == "" {
		typ = TicketJSAPI
	}
	for attempt := 0; ; attempt++ {
		at, err := f.Tokens.Token(ctx)
		if err != nil {
			return token.Token{}, fmt.Errorf("wechat: getticket: access token: %w", err)
		}
		q := url.Values{"access_token": {at.Value}, "type": {typ}}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base(f.BaseURL)+"/cgi-bin/ticket/getticket?"+q.Encode(), nil)
		if err != nil {
			return token.Token{}, redactErr(err, "")
		}
		tok, err := fetchToken(client(f.HTTPClient), req, "cgi-bin/ticket/getticket", "", "ticket")
		if attempt == 0 && IsInvalidToken(err) {
			if ierr := f.Tokens.Invalidate(ctx, at.Value); ierr != nil {
				return token.Token{}, fmt.Errorf("%w (and invalidating the access token: %v)", err, ierr)
			}
			continue
		}
		return tok, err
	}
}
