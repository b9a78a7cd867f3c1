// Package tokencacheotel records what tokencache's Sources do on
// OpenTelemetry metric instruments. It is a module of its own, so that the
// core module depends on no OpenTelemetry package; it uses the metric API
// only, and records on the global MeterProvider unless given one
// (WithMeterProvider).
//
// New makes the instruments. Put Metrics.Hooks in token.Options.Hooks, or
// once per Cache in rediscache.Options.Source.Hooks, and Track the Sources
// whose remaining token lifetime to report:
//
//	m, err := tokencacheotel.New()
//	cache, err := rediscache.New(rdb, rediscache.Options{Source: token.Options{Hooks: m.Hooks()}})
//	src, err := cache.Source("wechat:app", fetcher)
//	defer m.Track("wechat:app", src)()
//
// # Instruments
//
// Names follow the OpenTelemetry semantic conventions (dot-separated,
// counters of things pluralized, no _total, UCUM units); the Prometheus
// exporter turns them into the names in brackets.
//
//	instrument                           kind                 unit            attributes
//	tokencache.fetches                   Counter              {fetch}         tokencache.fetch.reason, tokencache.fetch.outcome, error.type
//	  [tokencache_fetches_total]           upstream fetches (or redemptions) this instance made
//	tokencache.fetch.duration            Histogram            s               tokencache.fetch.outcome, error.type
//	  [tokencache_fetch_duration_seconds]  the fetch alone, without the store calls around it
//	tokencache.wait.duration             Histogram            s               tokencache.wait.outcome
//	  [tokencache_wait_duration_seconds]   Token calls the near cache could not serve (those it served cost nothing and are not measured)
//	tokencache.invalidations             Counter              {invalidation}  tokencache.invalidation.result
//	  [tokencache_invalidations_total]     Invalidate calls
//	tokencache.store.errors              Counter              {error}         tokencache.store.operation
//	  [tokencache_store_errors_total]      failed calls to the shared store
//	tokencache.lock.losses               Counter              {loss}
//	  [tokencache_lock_losses_total]       refresh locks lost mid-refresh
//	tokencache.backoff.active            UpDownCounter        {credential}
//	  [tokencache_backoff_active]          credentials this instance holds back for a shared backoff now
//	tokencache.token.remaining_lifetime  Gauge (observable)   s
//	  [tokencache_token_remaining_lifetime_seconds]  of the tracked Sources' tokens: their minimum, or one per credential
//
// Attribute values:
//
//	tokencache.fetch.reason         missing, expiring, invalidated (token.Reason)
//	tokencache.fetch.outcome        ok, error, fenced (fetched, but a newer token was saved meanwhile)
//	error.type                      on errors only: the class of token.Classify (temporary, permanent, timeout, ...)
//	tokencache.wait.outcome         ok, timeout, backoff, closed, error
//	tokencache.invalidation.result  removed, stale (the token had been replaced already, or the call failed)
//	tokencache.store.operation      read shared token, read backoff, next version, lock, save, offer
//	tokencache.credential           the credential's name: only with WithCredentialAttribute
//
// WithAttributes adds attributes of your own to every measurement.
//
// The credential's name is an attribute only with WithCredentialAttribute:
// with a token.Map of many keys it would make a series per key. Without it,
// tokencache.token.remaining_lifetime is the least remaining lifetime over
// the tracked Sources. That minimum includes credentials nobody uses: a
// quiet Source lets its token expire instead of refreshing it ahead, by
// design; an expired token is not reported.
//
// The hooks record on attribute sets built once for each combination of
// values (up front, or on a credential's first use with the credential
// attribute): they allocate nothing and hold no lock but a map read. The
// gauge reads Source.Cached with no lock held; since Cached only sees a
// token that Token would serve at once, the gauge otherwise reports the
// expiry of the token it last saw served (for a token in its refresh-ahead
// window, idle, or just invalidated or closed).
//
// No spans: a hook has no context, so a span of a fetch could join no
// trace. Hooks never see a token or a secret, and neither do the
// instruments.
package tokencacheotel
