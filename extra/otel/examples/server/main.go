// Command server is examples/server with metrics: an HTTP service that
// shares one upstream token with every other instance through Redis, and
// serves the tokencache instruments (package tokencacheotel) at /metrics
// through the OpenTelemetry Prometheus exporter. docker-compose.yml runs
// three of them; scripts/compose-local.sh runs the same topology as plain
// processes and checks the fetch count on /metrics against the upstream's.
//
//	GET /token    this instance's view of the shared token (redacted) and whether the upstream accepts it
//	GET /stats    calls, errors and invalid tokens seen by this instance
//	GET /metrics  Prometheus text format: tokencache_fetches_total, tokencache_fetch_duration_seconds, ...
//	GET /healthz
//
// Configuration (flags or environment): REDIS_ADDR (comma-separated for a
// Cluster), UPSTREAM_URL (examples/fakeupstream), LISTEN, INSTANCE.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	tokencacheotel "github.com/tokencache/tokencache/extra/otel"
	"github.com/tokencache/tokencache/internal/cmdutil"
	"github.com/tokencache/tokencache/rediscache"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// credential is the name of the one credential this service uses.
const credential = "example:upstream"

func main() {
	redisAddr := flag.String("redis", cmdutil.EnvOr("REDIS_ADDR", "127.0.0.1:6379"), "Redis address(es), comma-separated (env REDIS_ADDR)")
	upstream := flag.String("upstream", cmdutil.EnvOr("UPSTREAM_URL", "http://127.0.0.1:9000"), "fake upstream URL (env UPSTREAM_URL)")
	addr := flag.String("addr", cmdutil.EnvOr("LISTEN", ":8080"), "listen address (env LISTEN)")
	instance := flag.String("instance", cmdutil.EnvOr("INSTANCE", hostname()), "instance name in replies (env INSTANCE)")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("instance", *instance)
	if err := run(*redisAddr, *upstream, *addr, *instance, logger); err != nil {
		logger.Error("server", "error", err)
		os.Exit(1)
	}
}

type stats struct {
	calls, errors, invalid atomic.Int64
}

// newMetrics returns tokencache's instruments on a MeterProvider exported
// to a Prometheus registry of its own, and the /metrics handler.
func newMetrics() (*tokencacheotel.Metrics, *sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	m, err := tokencacheotel.New(tokencacheotel.WithMeterProvider(mp))
	if err != nil {
		return nil, nil, nil, err
	}
	return m, mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

func run(redisAddr, upstream, addr, instance string, logger *slog.Logger) error {
	m, mp, metricsHandler, err := newMetrics()
	if err != nil {
		return err
	}
	defer mp.Shutdown(context.Background())
	defer m.Close()
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: strings.Split(redisAddr, ",")})
	defer rdb.Close()
	hc := &http.Client{Timeout: 10 * time.Second}
	src, err := rediscache.NewSource(rdb, credential, tokentest.HTTPFetcher(upstream, hc), rediscache.Options{
		Source: token.Options{Logger: logger, Hooks: m.Hooks()},
	})
	if err != nil {
		return err
	}
	defer src.Close()
	defer m.Track(credential, src)()

	mux := http.NewServeMux()
	handle(mux, src, hc, upstream, instance)
	mux.Handle("GET /metrics", metricsHandler)
	return cmdutil.Serve(addr, mux, logger)
}

// handle adds the routes of examples/server.
func handle(mux *http.ServeMux, src *token.Source, hc *http.Client, upstream, instance string) {
	var st stats
	mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
		st.calls.Add(1)
		tok, err := src.Token(r.Context())
		if err != nil {
			st.errors.Add(1)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		valid, err := tokentest.HTTPValid(r.Context(), hc, upstream, tok.Value)
		if err == nil && !valid {
			st.invalid.Add(1)
			_ = src.Invalidate(r.Context(), tok.Value) // as a client does on errcode 40001
		}
		cmdutil.JSON(w, map[string]any{
			"instance":    instance,
			"token":       token.Redact(tok.Value),
			"fingerprint": fingerprint(tok.Value),
			"expires_at":  tok.ExpiresAt,
			"valid":       valid,
		})
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		cmdutil.JSON(w, map[string]any{
			"instance": instance, "calls": st.calls.Load(), "errors": st.errors.Load(), "invalid": st.invalid.Load(),
		})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
}

// fingerprint identifies a token without revealing it: a SHA-256 prefix.
func fingerprint(v string) string {
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:6])
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
