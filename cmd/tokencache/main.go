// Command tokencache shows and repairs what package rediscache keeps in
// Redis, for operators: the credentials under a prefix, one credential's
// state (versions, remaining lifetimes, lock holder, backoff, limiter counts,
// refresh state), the refresh and invalidation events as they happen, and a
// compare-before-invalidate of one token version.
//
// It never prints a token, a refresh token or any other stored secret: only
// versions, lifetimes and short fingerprints.
//
// Usage:
//
//	tokencache [flags] list [-json]
//	tokencache [flags] status [-json] NAME
//	tokencache [flags] watch [NAME...]
//	tokencache [flags] invalidate NAME -version V
//
// Run "tokencache -h" for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// Exit codes.
const (
	exitOK             = 0
	exitNothing        = 1 // list: no credentials; status: no keys for the name
	exitError          = 2 // usage, Redis unreachable or refusing, other errors
	exitNotInvalidated = 3 // invalidate: the version given is not the stored one
)

const usageText = `usage: tokencache [flags] COMMAND [ARGS]

Commands:
  list [-json]                names of the credentials under the prefix
  status [-json] NAME         one credential's state (never its token)
  watch [NAME...]             refresh and invalidate events, until interrupted
  invalidate NAME -version V  remove the token if V is still its version
                              (compare-before-invalidate; every instance refetches)

Flags (before or after the command):
`

func main() {
	// go-redis logs failed dials to the process's stderr; the commands
	// report errors themselves.
	redis.SetLogger(quietLogger{})
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// quietLogger drops go-redis's internal log.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// run is the command with its arguments and outputs; it returns the exit
// code. SIGINT and SIGTERM end it (watch runs until one arrives).
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runContext(ctx, args, stdout, stderr)
}

// runContext is run until ctx is done.
func runContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := defaultConfig()
	fs := cfg.flagSet("tokencache", stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return helpOrError(err) // the flag package has printed why
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitError
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	commands := map[string]func(context.Context, *config, []string, io.Writer, io.Writer) int{
		"list":       runList,
		"status":     runStatus,
		"watch":      runWatch,
		"invalidate": runInvalidate,
	}
	f, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "tokencache: unknown command %q\n", cmd)
		fs.Usage()
		return exitError
	}
	return f(ctx, cfg, rest, stdout, stderr)
}

// helpOrError is the exit code after a flag parsing error: -h is no error.
func helpOrError(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitError
}
