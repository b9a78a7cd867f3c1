// Package wechattest is a fake WeChat API server for tests, in the style of
// net/http/httptest. It implements the classic and stable access_token
// endpoints, jsapi/wx_card tickets, two ordinary APIs that check the
// access_token the way WeChat does, and the Open Platform's component and
// authorizer tokens (open.go), with counters for every endpoint and
// injectable failures.
package wechattest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"
)

// Options configure a Server. The zero value is WeChat as documented, on
// WeChat's time scale.
type Options struct {
	// AppID and Secret the server accepts. Defaults DefaultAppID and
	// DefaultSecret.
	AppID, Secret string
	// Scale multiplies every WeChat duration (7200 s lifetime, 5 min grace
	// and stable-token early renewal, 30 s between force refreshes, the day
	// of the daily quotas). Default 1; 1.0/3600 turns 7200 s into 2 s.
	Scale float64
	// Lifetime of tokens and tickets, rounded down to whole seconds since
	// expires_in is in seconds. Default 7200 s × Scale, at least 1 s.
	Lifetime time.Duration
	// Strict makes a new classic token (or ticket) invalidate the previous
	// one at once. By default the previous one stays valid for Grace.
	Strict bool
	// Grace is how long a replaced token stays valid. Default 5 min × Scale.
	Grace time.Duration
	// DailyQuota is how many classic token fetches a day succeed before
	// 45009. Default 2000; negative means no limit.
	DailyQuota int
	// Latency delays every reply.
	Latency time.Duration
	// TokenLen is the length of issued tokens. Default 512, the length
	// WeChat tells developers to reserve.
	TokenLen int

	// ComponentAppID and ComponentSecret are the Open Platform third-party
	// platform's credentials the server accepts. Defaults
	// DefaultComponentAppID and DefaultComponentSecret.
	ComponentAppID, ComponentSecret string
	// RotateAuthorizerRefresh makes each redemption of an
	// authorizer_refresh_token return a new one and retire the one redeemed:
	// redeeming a retired one again answers 61023 and revokes the
	// authorization. WeChat documents that the authorizer_refresh_token
	// stays valid, unchanged, until the account revokes or renews the
	// authorization, and developers observe the same value returned; its
	// staff also tell developers to save a refreshed value when one is
	// returned (the old one then lasts a 5-minute transition). The default,
	// false, is the documented behaviour; true is the strict worst case, with
	// no transition, that catches a double redemption.
	RotateAuthorizerRefresh bool
}

// Credentials the server accepts by default.
const (
	DefaultAppID  = "wx0123456789abcdef"
	DefaultSecret = "TestAppSecret-9f8e7d6c5b4a3928170605"
)

// Failure is a fault injected with FailNext.
type Failure int

const (
	// Busy answers {"errcode":-1,"errmsg":"system error"}.
	Busy Failure = iota + 1
	// Malformed answers 200 with a body that is not JSON.
	Malformed
	// BadGateway answers HTTP 502.
	BadGateway
	// Quota answers errcode 45009.
	Quota
	// EmptyToken answers a reply without a token.
	EmptyToken
	// BadExpiry answers expires_in: 0.
	BadExpiry
)

// Endpoint names for Count.
const (
	EndpointToken       = "token"
	EndpointStable      = "stable_token"
	EndpointStableForce = "stable_token_force" // force_refresh calls that refreshed
	EndpointTicket      = "getticket"
	EndpointAPI         = "api"        // get_api_domain_ip and media/get
	EndpointAPIRejected = "api_reject" // API calls rejected for their token
	EndpointAPI40001    = "api_40001"  // ...with 40001: replaced (or unknown) token
	EndpointAPI42001    = "api_42001"  // ...with 42001: expired token
)

// Server is a running fake WeChat.
type Server struct {
	*httptest.Server
	opts Options

	mu         sync.Mutex
	tokens     map[string]*issued
	classic    *issued
	stable     *issued
	tickets    map[string]*issued // by ticket type
	counts     map[string]int
	failures   []Failure
	quotaDay   int64
	quotaUsed  int
	forceDay   int64
	forceCount int
	lastForce  time.Time
	start      time.Time
	open       openState
}

type issued struct {
	kind     string // kindComponent, kindAuthorizer, or "" for the others
	value    string
	at       time.Time
	expires  time.Time
	replaced time.Time // zero while current
}

// NewServer starts a fake WeChat. Close it when done.
func NewServer(opts Options) *Server {
	if opts.AppID == "" {
		opts.AppID = DefaultAppID
	}
	if opts.Secret == "" {
		opts.Secret = DefaultSecret
	}
	if opts.Scale <= 0 {
		opts.Scale = 1
	}
	if opts.Lifetime <= 0 {
		opts.Lifetime = opts.scale(7200 * time.Second)
	}
	opts.Lifetime = max(time.Second, opts.Lifetime.Truncate(time.Second))
	if opts.Grace <= 0 {
		opts.Grace = opts.scale(5 * time.Minute)
	}
	if opts.DailyQuota == 0 {
		opts.DailyQuota = 2000
	}
	if opts.TokenLen <= 0 {
		opts.TokenLen = 512
	}
	if opts.ComponentAppID == "" {
		opts.ComponentAppID = DefaultComponentAppID
	}
	if opts.ComponentSecret == "" {
		opts.ComponentSecret = DefaultComponentSecret
	}
	s := &Server{
		opts:    opts,
		tokens:  make(map[string]*issued),
		tickets: make(map[string]*issued),
		counts:  make(map[string]int),
		start:   time.Now(),
		open:    newOpenState(),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cgi-bin/token", s.token)
	mux.HandleFunc("POST /cgi-bin/stable_token", s.stableToken)
	mux.HandleFunc("GET /cgi-bin/ticket/getticket", s.ticket)
	mux.HandleFunc("/cgi-bin/get_api_domain_ip", s.apiDomainIP)
	mux.HandleFunc("GET /cgi-bin/media/get", s.media)
	mux.HandleFunc("POST /cgi-bin/component/api_component_token", s.componentToken)
	mux.HandleFunc("POST /cgi-bin/component/api_authorizer_token", s.authorizerToken)
	s.Server = httptest.NewServer(mux)
	return s
}

func (o Options) scale(d time.Duration) time.Duration { return time.Duration(float64(d) * o.Scale) }

// Options returns the server's options with defaults filled in.
func (s *Server) Options() Options { return s.opts }

// FailNext makes the next len(f) replies of the token, stable token,
// ticket, component token and authorizer token endpoints fail as given.
func (s *Server) FailNext(f ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, f...)
}

// Count returns how many calls an endpoint answered (see the Endpoint
// constants).
func (s *Server) Count(endpoint string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[endpoint]
}

// Valid reports whether the server accepts v as an access token (classic,
// stable, component or authorizer) or ticket now.
func (s *Server) Valid(v string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	code, _ := s.checkLocked(v, time.Now())
	return code == 0
}

// checkLocked validates a token or ticket like WeChat: 0, 40001 (unknown,
// replaced), 42001 (expired) or 40014 (malformed).
func (s *Server) checkLocked(v string, now time.Time) (int, string) {
	if v == "" {
		return 41001, "access_token missing"
	}
	t := s.tokens[v]
	switch {
	case t == nil && len(v) != s.opts.TokenLen:
		return 40014, "invalid access_token"
	case t == nil:
		return 40001, "invalid credential, access_token is invalid or not latest"
	case !t.replaced.IsZero() && !now.Before(t.replaced.Add(s.grace())) && now.Before(t.expires):
		return 40001, "invalid credential, access_token is invalid or not latest"
	case !now.Before(t.expires):
		return 42001, "access_token expired"
	}
	return 0, ""
}

func (s *Server) grace() time.Duration {
	if s.opts.Strict {
		return 0
	}
	return s.opts.Grace
}

func (s *Server) day(now time.Time) int64 {
	return int64(now.Sub(s.start) / s.opts.scale(24*time.Hour))
}

func (s *Server) newValue(prefix string) string {
	b := make([]byte, s.opts.TokenLen/2+1)
	_, _ = rand.Read(b)
	return (prefix + hex.EncodeToString(b))[:s.opts.TokenLen]
}

// issueLocked creates a token replacing cur (nil for none).
func (s *Server) issueLocked(cur *issued, prefix string, now time.Time) *issued {
	if cur != nil && cur.replaced.IsZero() {
		cur.replaced = now
	}
	t := &issued{value: s.newValue(prefix), at: now, expires: now.Add(s.opts.Lifetime)}
	s.tokens[t.value] = t
	return t
}

func (s *Server) delay(r *http.Request) bool {
	if s.opts.Latency <= 0 {
		return true
	}
	t := time.NewTimer(s.opts.Latency)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func reply(w http.ResponseWriter, v any) {
	// WeChat answers JSON with this content type.
	w.Header().Set("Content-Type", "application/json; encoding=utf-8")
	_ = json.NewEncoder(w).Encode(v)
}

func errReply(w http.ResponseWriter, code int, msg string) {
	reply(w, map[string]any{"errcode": code, "errmsg": msg + " rid: fake-" + hex.EncodeToString([]byte(msg))[:8]})
}

// injectedLocked answers an injected failure, if one is queued.
func (s *Server) injectedLocked(w http.ResponseWriter) bool {
	if len(s.failures) == 0 {
		return false
	}
	f := s.failures[0]
	s.failures = s.failures[1:]
	switch f {
	case Busy:
		errReply(w, -1, "system error")
	case Malformed:
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<html>502 Bad Gateway</html>")
	case BadGateway:
		w.WriteHeader(http.StatusBadGateway)
	case Quota:
		errReply(w, 45009, "reach max api daily quota limit")
	case EmptyToken:
		reply(w, map[string]any{"access_token": "", "ticket": "", "component_access_token": "", "authorizer_access_token": "",
			"expires_in": 7200, "errcode": 0, "errmsg": "ok"})
	case BadExpiry:
		bad := s.newValue("bad")
		reply(w, map[string]any{"access_token": bad, "ticket": bad, "component_access_token": bad, "authorizer_access_token": bad,
			"expires_in": 0, "errcode": 0, "errmsg": "ok"})
	default:
		return false
	}
	return true
}

// credentialsLocked checks appid and secret as WeChat does.
func (s *Server) credentialsLocked(w http.ResponseWriter, grant, appid, secret string) bool {
	switch {
	case grant != "client_credential":
		errReply(w, 40002, "invalid grant_type")
	case appid != s.opts.AppID:
		errReply(w, 40013, "invalid appid")
	case secret != s.opts.Secret:
		errReply(w, 40125, "invalid appsecret")
	default:
		return true
	}
	return false
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if !s.delay(r) {
		return
	}
	q := r.URL.Query()
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[EndpointToken]++
	if s.injectedLocked(w) || !s.credentialsLocked(w, q.Get("grant_type"), q.Get("appid"), q.Get("secret")) {
		return
	}
	if d := s.day(now); d != s.quotaDay {
		s.quotaDay, s.quotaUsed = d, 0
	}
	if s.opts.DailyQuota > 0 && s.quotaUsed >= s.opts.DailyQuota {
		errReply(w, 45009, "reach max api daily quota limit")
		return
	}
	s.quotaUsed++
	s.classic = s.issueLocked(s.classic, "AT", now)
	reply(w, map[string]any{"access_token": s.classic.value, "expires_in": int(s.opts.Lifetime / time.Second)})
}

func (s *Server) stableToken(w http.ResponseWriter, r *http.Request) {
	if !s.delay(r) {
		return
	}
	var req struct {
		GrantType    string `json:"grant_type"`
		AppID        string `json:"appid"`
		Secret       string `json:"secret"`
		ForceRefresh bool   `json:"force_refresh"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		errReply(w, 47001, "data format error")
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[EndpointStable]++
	if s.injectedLocked(w) || !s.credentialsLocked(w, req.GrantType, req.AppID, req.Secret) {
		return
	}
	renew := s.stable == nil || !now.Before(s.stable.expires.Add(-s.opts.scale(5*time.Minute)))
	if req.ForceRefresh {
		if d := s.day(now); d != s.forceDay {
			s.forceDay, s.forceCount = d, 0
		}
		// Within the limits a forced refresh invalidates the token at once;
		// beyond them WeChat does not refresh.
		if s.forceCount < 20 && (s.lastForce.IsZero() || now.Sub(s.lastForce) >= s.opts.scale(30*time.Second)) {
			s.forceCount++
			s.lastForce = now
			s.counts[EndpointStableForce]++
			if s.stable != nil {
				s.stable.replaced = now.Add(-s.grace() - 1) // dead now, whatever the mode
			}
			s.stable = s.issueLocked(nil, "ST", now)
			renew = false
		}
	}
	if renew {
		// Normal mode renews within 5 minutes of expiry; the old token
		// stays valid until it expires.
		s.stable = s.issueLocked(nil, "ST", now)
	}
	reply(w, map[string]any{"access_token": s.stable.value, "expires_in": int(time.Until(s.stable.expires) / time.Second)})
}

func (s *Server) ticket(w http.ResponseWriter, r *http.Request) {
	if !s.delay(r) {
		return
	}
	q := r.URL.Query()
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[EndpointTicket]++
	if s.injectedLocked(w) {
		return
	}
	if code, msg := s.checkLocked(q.Get("access_token"), now); code != 0 {
		errReply(w, code, msg)
		return
	}
	typ := q.Get("type")
	if typ != "jsapi" && typ != "wx_card" {
		errReply(w, 40097, "invalid args")
		return
	}
	t := s.issueLocked(s.tickets[typ], "TK", now)
	s.tickets[typ] = t
	reply(w, map[string]any{"errcode": 0, "errmsg": "ok", "ticket": t.value, "expires_in": int(s.opts.Lifetime / time.Second)})
}

// authorize checks the access_token of an ordinary API call.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	if !s.delay(r) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[EndpointAPI]++
	if code, msg := s.checkLocked(r.URL.Query().Get("access_token"), time.Now()); code != 0 {
		s.counts[EndpointAPIRejected]++
		s.counts[fmt.Sprintf("api_%d", code)]++
		errReply(w, code, msg)
		return false
	}
	return true
}

// apiDomainIP is an ordinary API (GET or POST; a POST body is echoed back in
// "echo", so tests can check that retried bodies arrive whole).
func (s *Server) apiDomainIP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	if !s.authorize(w, r) {
		return
	}
	reply(w, map[string]any{"ip_list": []string{"101.226.90.58", "101.226.90.149"}, "echo": string(body)})
}

// media returns a non-JSON body, like a media download.
func (s *Server) media(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	w.Header().Set("Content-Type", "image/jpeg")
	_, _ = fmt.Fprintf(w, "\xff\xd8\xff\xe0JFIF media %s", r.URL.Query().Get("media_id"))
}
