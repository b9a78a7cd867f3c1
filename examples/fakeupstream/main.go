// Command fakeupstream serves a fake token endpoint (token/tokentest) over
// HTTP, for running examples/server the way it is deployed: several
// instances, one Redis, one upstream.
//
//	GET /token           {"token": "...", "expires_in_ms": N}; each call invalidates the previous token
//	GET /valid?token=... {"valid": true|false}
//	GET /stats           {"calls": N, "issued": N}
package main

import (
	"flag"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/tokencache/tokencache/internal/cmdutil"
	"github.com/tokencache/tokencache/token/tokentest"
)

func main() {
	addr := flag.String("addr", cmdutil.EnvOr("LISTEN", ":9000"), "listen address (env LISTEN)")
	lifetime := flag.Duration("lifetime", 30*time.Second, "token lifetime")
	grace := flag.Duration("grace", 0, "how long a replaced token stays valid (0: strict)")
	latency := flag.Duration("latency", 50*time.Millisecond, "latency of a token fetch")
	flag.Parse()

	up := tokentest.New(*lifetime)
	up.Grace, up.Latency, up.TokenLen = *grace, *latency, 32
	mux := http.NewServeMux()
	mux.Handle("/token", up)
	mux.Handle("/valid", up)
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		cmdutil.JSON(w, map[string]int{"calls": up.Calls(), "issued": up.Issued()})
	})
	if err := cmdutil.Serve(*addr, mux, slog.Default()); err != nil {
		slog.Error("fakeupstream", "error", err)
		os.Exit(1)
	}
}
