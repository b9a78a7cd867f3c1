package tokentest

// Rotating served over HTTP, so that instances running as other processes
// redeem against one fake authorization server.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokencache/tokencache/token"
)

// RotatingReply is the JSON body of a successful redemption over HTTP, as
// an OAuth2 token endpoint sends it (RFC 6749, section 5.1), with
// ExpiresAtMS added: expires_in counts whole seconds, too coarse for the
// short lifetimes of tests.
type RotatingReply struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`    // seconds, rounded down
	ExpiresAtMS  int64  `json:"expires_at_ms"` // Unix milliseconds, rounded down
	RefreshToken string `json:"refresh_token"`
}

// ServeHTTP serves r as an OAuth2 token endpoint, at whatever path it is
// mounted:
//
//	POST grant_type=refresh_token&refresh_token=...  (form-encoded)
//	200 RotatingReply
//	400 {"error": "invalid_grant"}           refused: revoked, reused or unknown
//	400 {"error": "unsupported_grant_type"}  or "invalid_request"
//	405 for any method but POST
//
// Like Redeem, it acts on the request at once and answers after Latency: a
// client that goes away meanwhile gets no answer, but its refresh token was
// replaced all the same.
func (r *Rotating) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		oauthError(w, http.StatusMethodNotAllowed, "invalid_request")
		return
	}
	req.Body = http.MaxBytesReader(w, req.Body, 1<<16)
	if err := req.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	switch {
	case req.PostForm.Get("grant_type") != "refresh_token":
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type")
		return
	case req.PostForm.Get("refresh_token") == "":
		oauthError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	tok, next, err := r.Redeem(req.Context(), req.PostForm.Get("refresh_token"))
	switch {
	case errors.Is(err, ErrRevoked):
		oauthError(w, http.StatusBadRequest, "invalid_grant")
		return
	case err != nil: // the client went away during Latency
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(RotatingReply{
		AccessToken:  tok.Value,
		TokenType:    "Bearer",
		ExpiresIn:    int64(time.Until(tok.ExpiresAt) / time.Second),
		ExpiresAtMS:  tok.ExpiresAt.UnixMilli(),
		RefreshToken: next,
	})
}

func oauthError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
}

// HTTPRedeemer returns a token.Redeemer that redeems refresh tokens at the
// OAuth2 token endpoint tokenURL, such as a Rotating served over HTTP, with
// client (http.DefaultClient if nil). A 400 reply with error invalid_grant
// is returned as an error wrapping ErrRevoked, which matches
// token.ErrRefreshRevoked. The token's expiry is expires_at_ms if the reply
// has it, else expires_in counted from when the request was sent.
func HTTPRedeemer(tokenURL string, client *http.Client) token.Redeemer {
	if client == nil {
		client = http.DefaultClient
	}
	return &httpRedeemer{url: tokenURL, client: client}
}

type httpRedeemer struct {
	url    string
	client *http.Client
}

// Fetch implements token.Fetcher; a Source calls Redeem instead.
func (h *httpRedeemer) Fetch(context.Context) (token.Token, error) {
	return token.Token{}, errors.New("tokentest: HTTPRedeemer needs a refresh token: use Redeem")
}

// Redeem implements token.Redeemer.
func (h *httpRedeemer) Redeem(ctx context.Context, refresh string) (token.Token, string, error) {
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, strings.NewReader(form.Encode()))
	if err != nil {
		return token.Token{}, "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	start := time.Now()
	resp, err := h.client.Do(req)
	if err != nil {
		return token.Token{}, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return token.Token{}, "", err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error == "invalid_grant" {
			return token.Token{}, "", fmt.Errorf("tokentest: status %d: %w", resp.StatusCode, ErrRevoked)
		}
		return token.Token{}, "", fmt.Errorf("tokentest: token endpoint status %d", resp.StatusCode)
	}
	var r RotatingReply
	if err := json.Unmarshal(body, &r); err != nil || r.AccessToken == "" || (r.ExpiresAtMS <= 0 && r.ExpiresIn <= 0) {
		return token.Token{}, "", fmt.Errorf("tokentest: malformed token reply (%d bytes)", len(body))
	}
	exp := start.Add(time.Duration(r.ExpiresIn) * time.Second)
	if r.ExpiresAtMS > 0 {
		exp = time.UnixMilli(r.ExpiresAtMS)
	}
	return token.Token{Value: r.AccessToken, ExpiresAt: exp}, r.RefreshToken, nil
}
