package wechat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
)

// Transport is an http.RoundTripper for WeChat API calls: it adds the shared
// access_token to each request's query, and when the reply's errcode says the
// token is invalid (40001, 40014, 42001) it invalidates that token and sends
// the request once more with the new one. Invalidating a token that another
// caller already replaced fetches nothing, so a storm of 40001s across
// instances costs one fetch.
//
// Request bodies must be replayable: requests made with http.NewRequest and
// a bytes, strings or nil body are; any other body is read into memory
// first. Replies that are not JSON (media downloads) pass through untouched.
type Transport struct {
	// Tokens supplies the access token added to each request.
	Tokens TokenSource
	// Base defaults to http.DefaultTransport.
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	getBody := req.GetBody
	if req.Body != nil && req.Body != http.NoBody && getBody == nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("wechat: reading the request body: %w", err)
		}
		getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	} else if req.Body != nil {
		req.Body.Close()
	}
	ctx := req.Context()
	for attempt := 0; ; attempt++ {
		tok, err := t.Tokens.Token(ctx)
		if err != nil {
			return nil, fmt.Errorf("wechat: access token: %w", err)
		}
		r := req.Clone(ctx)
		q := r.URL.Query()
		q.Set("access_token", tok.Value)
		r.URL.RawQuery = q.Encode()
		if getBody != nil {
			if r.Body, err = getBody(); err != nil {
				return nil, fmt.Errorf("wechat: replaying the request body: %w", err)
			}
		}
		resp, err := base.RoundTrip(r)
		if err != nil {
			return nil, redactErr(err, "")
		}
		code, err := peekErrcode(resp)
		if err != nil {
			return nil, err
		}
		if attempt > 0 || !isInvalidTokenCode(code) {
			return resp, nil
		}
		resp.Body.Close()
		if err := t.Tokens.Invalidate(ctx, tok.Value); err != nil {
			return nil, fmt.Errorf("wechat: invalidating a rejected access token: %w", err)
		}
	}
}

// peekErrcode reads the errcode of a JSON reply of at most maxReply bytes and
// puts the body back. Other replies are left alone and give 0.
func peekErrcode(resp *http.Response) (int, error) {
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if ct != "" && ct != "application/json" && ct != "text/plain" {
		return 0, nil
	}
	head, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		resp.Body.Close()
		return 0, fmt.Errorf("wechat: reading the reply: %w", err)
	}
	if len(head) > maxReply {
		// Too long for an error reply: pass it through whole.
		resp.Body = readCloser{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
		return 0, nil
	}
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(head))
	var e *Error
	if err := apiError("", head, ""); errors.As(err, &e) {
		return e.Code, nil
	}
	return 0, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
