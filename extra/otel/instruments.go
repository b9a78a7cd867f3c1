package tokencacheotel

import (
	"errors"

	"go.opentelemetry.io/otel/metric"
)

// Instrument names (see the package doc).
const (
	NameFetches           = "tokencache.fetches"
	NameFetchDuration     = "tokencache.fetch.duration"
	NameWaitDuration      = "tokencache.wait.duration"
	NameInvalidations     = "tokencache.invalidations"
	NameStoreErrors       = "tokencache.store.errors"
	NameLockLosses        = "tokencache.lock.losses"
	NameBackoffActive     = "tokencache.backoff.active"
	NameRemainingLifetime = "tokencache.token.remaining_lifetime"
)

// durationBounds are the histogram buckets, in seconds: those of the HTTP
// semantic conventions, plus 30 s, the default token.Options.WaitTimeout.
var durationBounds = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30}

type instruments struct {
	fetches       metric.Int64Counter
	fetchDuration metric.Float64Histogram
	waitDuration  metric.Float64Histogram
	invalidations metric.Int64Counter
	storeErrors   metric.Int64Counter
	lockLosses    metric.Int64Counter
	backoffActive metric.Int64UpDownCounter
	remaining     metric.Float64ObservableGauge
}

func (in *instruments) init(m metric.Meter) error {
	var errs [8]error
	in.fetches, errs[0] = m.Int64Counter(NameFetches, metric.WithUnit("{fetch}"),
		metric.WithDescription("Upstream fetches (or redemptions) this instance made, by reason and outcome."))
	in.fetchDuration, errs[1] = m.Float64Histogram(NameFetchDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of an upstream fetch alone, by outcome."),
		metric.WithExplicitBucketBoundaries(durationBounds...))
	in.waitDuration, errs[2] = m.Float64Histogram(NameWaitDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of a Token call that the near cache could not serve, by outcome."),
		metric.WithExplicitBucketBoundaries(durationBounds...))
	in.invalidations, errs[3] = m.Int64Counter(NameInvalidations, metric.WithUnit("{invalidation}"),
		metric.WithDescription("Invalidate calls, by whether the token was removed or already replaced."))
	in.storeErrors, errs[4] = m.Int64Counter(NameStoreErrors, metric.WithUnit("{error}"),
		metric.WithDescription("Failed calls to the shared store, by operation."))
	in.lockLosses, errs[5] = m.Int64Counter(NameLockLosses, metric.WithUnit("{loss}"),
		metric.WithDescription("Refresh locks lost mid-refresh."))
	in.backoffActive, errs[6] = m.Int64UpDownCounter(NameBackoffActive, metric.WithUnit("{credential}"),
		metric.WithDescription("Credentials for which this instance obeys a shared backoff now."))
	in.remaining, errs[7] = m.Float64ObservableGauge(NameRemainingLifetime, metric.WithUnit("s"),
		metric.WithDescription("Remaining lifetime of the served token: the minimum over tracked credentials, or per credential with WithCredentialAttribute."))
	return errors.Join(errs[:]...)
}
