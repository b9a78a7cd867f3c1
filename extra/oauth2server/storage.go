package oauth2server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"sync"
	"time"

	"github.com/ory/fosite"
)

// grantKey is the context key under which the token endpoint records the
// request's grant_type, so that the storage can tell a revocation fosite
// makes on detecting reuse from one asked for at /oauth2/revoke.
type grantKey struct{}

// refreshEntry is one refresh token, by signature.
type refreshEntry struct {
	req fosite.Requester
	// accessSig is the access token issued with this refresh token: fosite
	// retires it when this refresh token is redeemed.
	accessSig string
	// active is false once the token is retired or revoked.
	active bool
	// usedAt is when the token was first redeemed, if it stays active for
	// a grace period after that.
	usedAt time.Time
}

// codeEntry is one authorization code, by signature.
type codeEntry struct {
	req  fosite.Requester
	used bool
}

// memStore is the fosite storage: clients, codes and tokens in memory,
// under one mutex. fosite's own storage.MemoryStore is not used: it writes
// its refresh-token map under the wrong mutex on revocation (a data race
// under load with -race), it tracks only the newest token of a family, and
// it has no reuse grace period.
type memStore struct {
	grace time.Duration

	mu      sync.Mutex
	clients map[string]fosite.Client
	codes   map[string]*codeEntry
	access  map[string]fosite.Requester
	refresh map[string]*refreshEntry
	jtis    map[string]time.Time
	stats   Stats
}

func newMemStore(grace time.Duration) *memStore {
	return &memStore{
		grace:   grace,
		clients: map[string]fosite.Client{},
		codes:   map[string]*codeEntry{},
		access:  map[string]fosite.Requester{},
		refresh: map[string]*refreshEntry{},
		jtis:    map[string]time.Time{},
		stats:   Stats{Requests: map[string]int{}, Issued: map[string]int{}},
	}
}

// GetClient implements fosite.ClientManager.
func (m *memStore) GetClient(_ context.Context, id string) (fosite.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.clients[id]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	return c, nil
}

// ClientAssertionJWTValid implements fosite.ClientManager.
func (m *memStore) ClientAssertionJWTValid(_ context.Context, jti string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if exp, ok := m.jtis[jti]; ok && exp.After(time.Now()) {
		return fosite.ErrJTIKnown
	}
	return nil
}

// SetClientAssertionJWT implements fosite.ClientManager.
func (m *memStore) SetClientAssertionJWT(_ context.Context, jti string, exp time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.jtis[jti]; ok && e.After(time.Now()) {
		return fosite.ErrJTIKnown
	}
	m.jtis[jti] = exp
	return nil
}

// CreateAuthorizeCodeSession implements oauth2.AuthorizeCodeStorage.
func (m *memStore) CreateAuthorizeCodeSession(_ context.Context, sig string, req fosite.Requester) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.codes[sig] = &codeEntry{req: req}
	return nil
}

// GetAuthorizeCodeSession implements oauth2.AuthorizeCodeStorage. A used
// code is returned with ErrInvalidatedAuthorizeCode, as fosite requires to
// revoke what the code issued.
func (m *memStore) GetAuthorizeCodeSession(_ context.Context, sig string, _ fosite.Session) (fosite.Requester, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.codes[sig]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	if c.used {
		return c.req, fosite.ErrInvalidatedAuthorizeCode
	}
	return c.req, nil
}

// InvalidateAuthorizeCodeSession implements oauth2.AuthorizeCodeStorage.
func (m *memStore) InvalidateAuthorizeCodeSession(_ context.Context, sig string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.codes[sig]
	if !ok {
		return fosite.ErrNotFound
	}
	c.used = true
	return nil
}

// CreateAccessTokenSession implements oauth2.AccessTokenStorage.
func (m *memStore) CreateAccessTokenSession(_ context.Context, sig string, req fosite.Requester) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.access[sig] = req
	return nil
}

// GetAccessTokenSession implements oauth2.AccessTokenStorage.
func (m *memStore) GetAccessTokenSession(_ context.Context, sig string, _ fosite.Session) (fosite.Requester, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	req, ok := m.access[sig]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	return req, nil
}

// DeleteAccessTokenSession implements oauth2.AccessTokenStorage.
func (m *memStore) DeleteAccessTokenSession(_ context.Context, sig string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.access, sig)
	return nil
}

// CreateRefreshTokenSession implements oauth2.RefreshTokenStorage.
func (m *memStore) CreateRefreshTokenSession(_ context.Context, sig, accessSig string, req fosite.Requester) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh[sig] = &refreshEntry{req: req, accessSig: accessSig, active: true}
	return nil
}

// GetRefreshTokenSession implements oauth2.RefreshTokenStorage. A retired
// token is returned with ErrInactiveToken: that is how fosite detects
// reuse (handler/oauth2/flow_refresh.go), and it then revokes the family.
// A token redeemed less than the grace period ago is still active.
func (m *memStore) GetRefreshTokenSession(_ context.Context, sig string, _ fosite.Session) (fosite.Requester, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.refresh[sig]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	if !e.active || (!e.usedAt.IsZero() && time.Since(e.usedAt) >= m.grace) {
		return e.req, fosite.ErrInactiveToken
	}
	return e.req, nil
}

// DeleteRefreshTokenSession implements oauth2.RefreshTokenStorage.
func (m *memStore) DeleteRefreshTokenSession(_ context.Context, sig string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.refresh, sig)
	return nil
}

// RotateRefreshToken implements oauth2.RefreshTokenStorage: fosite calls
// it when sig is redeemed. The token is retired (at once, or when the grace
// period ends) and the access token issued with it is revoked, as fosite's
// own memory storage does. The rest of the family stays valid.
func (m *memStore) RotateRefreshToken(_ context.Context, _ string, sig string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.refresh[sig]
	if !ok {
		return fosite.ErrNotFound
	}
	delete(m.access, e.accessSig)
	if m.grace <= 0 {
		e.active = false
	} else if e.usedAt.IsZero() {
		// The first redemption starts the grace period; later ones
		// within it do not extend it.
		e.usedAt = time.Now()
	}
	return nil
}

// RevokeRefreshToken implements oauth2.TokenRevocationStorage: it retires
// every refresh token of the family (one authorization: fosite gives each
// token issued from it the authorization's request ID). fosite calls it on
// a refresh token's or a code's reuse, which the counters record, and for
// /oauth2/revoke.
func (m *memStore) RevokeRefreshToken(ctx context.Context, requestID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch grant, _ := ctx.Value(grantKey{}).(string); grant {
	case "refresh_token":
		m.stats.ReuseRevocations++
	case "authorization_code":
		m.stats.CodeReuseRevocations++
	}
	for _, e := range m.refresh {
		if e.req.GetID() == requestID {
			e.active = false
		}
	}
	return nil
}

// RevokeAccessToken implements oauth2.TokenRevocationStorage: it revokes
// every access token of the family.
func (m *memStore) RevokeAccessToken(_ context.Context, requestID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for sig, req := range m.access {
		if req.GetID() == requestID {
			delete(m.access, sig)
		}
	}
	return nil
}

// count records a token-endpoint request and whether it issued a token.
func (m *memStore) count(grant string, issued bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats.Requests[grant]++
	if issued {
		m.stats.Issued[grant]++
	}
}

// snapshot returns a copy of the counters.
func (m *memStore) snapshot() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.stats
	s.Requests = make(map[string]int, len(m.stats.Requests))
	for k, v := range m.stats.Requests {
		s.Requests[k] = v
	}
	s.Issued = make(map[string]int, len(m.stats.Issued))
	for k, v := range m.stats.Issued {
		s.Issued[k] = v
	}
	return s
}

// sha256Hasher compares client secrets by their SHA-256 digests. fosite's
// default is bcrypt at cost 12, a quarter of a second of CPU per token
// request: a load test on a small machine would measure bcrypt. A test
// server's secrets need no key stretching.
type sha256Hasher struct{}

// Compare implements fosite.Hasher.
func (sha256Hasher) Compare(_ context.Context, hash, data []byte) error {
	sum := sha256.Sum256(data)
	if subtle.ConstantTimeCompare(hash, sum[:]) != 1 {
		return errors.New("oauth2server: client secret mismatch")
	}
	return nil
}

// Hash implements fosite.Hasher.
func (sha256Hasher) Hash(_ context.Context, data []byte) ([]byte, error) {
	sum := sha256.Sum256(data)
	return sum[:], nil
}
