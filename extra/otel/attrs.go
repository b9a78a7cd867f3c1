package tokencacheotel

import (
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tokencache/tokencache/token"
)

// Attribute keys (see the package doc).
const (
	AttrCredential         = attribute.Key("tokencache.credential")
	AttrFetchReason        = attribute.Key("tokencache.fetch.reason")
	AttrFetchOutcome       = attribute.Key("tokencache.fetch.outcome")
	AttrErrorType          = attribute.Key("error.type")
	AttrWaitOutcome        = attribute.Key("tokencache.wait.outcome")
	AttrInvalidationResult = attribute.Key("tokencache.invalidation.result")
	AttrStoreOperation     = attribute.Key("tokencache.store.operation")
)

// Values of tokencache.invalidation.result.
const (
	resultRemoved = "removed"
	resultStale   = "stale"
)

// kind says which attributes a key describes.
type kind uint8

const (
	kindPlain         kind = iota // none but the common ones
	kindFetch                     // reason, outcome, error.type
	kindFetchDuration             // outcome, error.type
	kindWait                      // outcome
	kindInvalidation              // result (in outcome)
	kindStore                     // operation (in outcome)
)

// key is one combination of attribute values. Every value comes from the
// token package's constants, so the combinations are few.
type key struct {
	kind    kind
	reason  token.Reason
	outcome string
	class   string
}

// opts is the option of one attribute set, as the slices the instruments'
// variadic methods take: passing a prebuilt slice allocates nothing.
type opts struct {
	add []metric.AddOption
	rec []metric.RecordOption
	obs []metric.ObserveOption
}

// attrCache maps a credential and a key to its options. Without the
// credential attribute every known combination is built up front and the
// map only grows if a future token package reports a new value.
type attrCache struct {
	common   []attribute.KeyValue
	withCred bool
	mu       sync.RWMutex // only held for a map access
	m        map[credKey]*opts
}

type credKey struct {
	cred string // "" unless withCred
	key
}

// knownKeys lists the combinations the token package reports today.
func knownKeys() []key {
	reasons := []token.Reason{token.ReasonMissing, token.ReasonExpiring, token.ReasonInvalidated}
	classes := []string{token.ClassTemporary, token.ClassPermanent, token.ClassTimeout, token.ClassInvalidToken,
		token.ClassTooLarge, token.ClassTooManyFetches, token.ClassPanic, token.ClassNotPushed,
		token.ClassRefreshRevoked, token.ClassNoRefreshState}
	fetchOutcomes := []key{{outcome: token.FetchOK}, {outcome: token.FetchFenced}}
	for _, c := range classes {
		fetchOutcomes = append(fetchOutcomes, key{outcome: token.FetchError, class: c})
	}
	keys := []key{{kind: kindPlain}, {kind: kindInvalidation, outcome: resultRemoved}, {kind: kindInvalidation, outcome: resultStale}}
	for _, o := range fetchOutcomes {
		keys = append(keys, key{kind: kindFetchDuration, outcome: o.outcome, class: o.class})
		for _, r := range reasons {
			keys = append(keys, key{kind: kindFetch, reason: r, outcome: o.outcome, class: o.class})
		}
	}
	for _, o := range []string{token.WaitOK, token.WaitTimeout, token.WaitBackoff, token.WaitClosed, token.WaitError} {
		keys = append(keys, key{kind: kindWait, outcome: o})
	}
	// The operations token.Source reports (StoreErrorInfo.Op).
	for _, op := range []string{"read shared token", "read backoff", "next version", "lock", "save", "offer"} {
		keys = append(keys, key{kind: kindStore, outcome: op})
	}
	return keys
}

func (c *attrCache) init(common []attribute.KeyValue, withCred bool) {
	c.common, c.withCred = common, withCred
	c.m = make(map[credKey]*opts)
	if withCred {
		return // built per credential, on first use
	}
	for _, k := range knownKeys() {
		c.m[credKey{key: k}] = c.build("", k)
	}
}

// get returns the options of k for the credential cred.
func (c *attrCache) get(cred string, k key) *opts {
	if !c.withCred {
		cred = ""
	}
	ck := credKey{cred, k}
	c.mu.RLock()
	o := c.m[ck]
	c.mu.RUnlock()
	if o != nil {
		return o
	}
	o = c.build(cred, k)
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[ck]; old != nil {
		return old
	}
	c.m[ck] = o
	return o
}

// build makes the attribute set of k (and cred, if not "").
func (c *attrCache) build(cred string, k key) *opts {
	kvs := append([]attribute.KeyValue(nil), c.common...)
	if cred != "" {
		kvs = append(kvs, AttrCredential.String(cred))
	}
	switch k.kind {
	case kindFetch, kindFetchDuration:
		if k.kind == kindFetch {
			kvs = append(kvs, AttrFetchReason.String(k.reason.String()))
		}
		kvs = append(kvs, AttrFetchOutcome.String(k.outcome))
		if k.class != "" {
			kvs = append(kvs, AttrErrorType.String(k.class))
		}
	case kindWait:
		kvs = append(kvs, AttrWaitOutcome.String(k.outcome))
	case kindInvalidation:
		kvs = append(kvs, AttrInvalidationResult.String(k.outcome))
	case kindStore:
		kvs = append(kvs, AttrStoreOperation.String(k.outcome))
	}
	o := metric.WithAttributeSet(attribute.NewSet(kvs...))
	return &opts{add: []metric.AddOption{o}, rec: []metric.RecordOption{o}, obs: []metric.ObserveOption{o}}
}
