package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// config holds the flags every command takes.
type config struct {
	url     string        // -redis, default $REDIS_URL
	cluster string        // -cluster: comma-separated seed nodes
	prefix  string        // -prefix
	timeout time.Duration // -timeout
	legacy  bool          // -legacy-events
}

func defaultConfig() *config {
	return &config{url: os.Getenv("REDIS_URL"), prefix: "tokencache:", timeout: 5 * time.Second}
}

// flagSet returns a FlagSet with the global flags, whose defaults are what
// cfg holds, so that a command's own FlagSet can take them too (after the
// command name) without resetting what was given before it.
func (cfg *config) flagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.url, "redis", cfg.url, "Redis `URL` (redis://[user:password@]host:port/db, rediss:// for TLS, unix://); default $REDIS_URL, else redis://localhost:6379")
	fs.StringVar(&cfg.cluster, "cluster", cfg.cluster, "Redis Cluster seed nodes, `host:port,...`; user, password, TLS and options come from -redis if given")
	fs.StringVar(&cfg.prefix, "prefix", cfg.prefix, "key `prefix` of the deployment (rediscache.Options.Prefix)")
	fs.DurationVar(&cfg.timeout, "timeout", cfg.timeout, "time limit of a command (for watch: of subscribing)")
	fs.BoolVar(&cfg.legacy, "legacy-events", cfg.legacy, "on a DB other than 0, also use the legacy channel <prefix>events (rediscache.Options.LegacyEvents)")
	return fs
}

// parseInterspersed parses flags wherever they are among args, as in
// "status NAME -json", and returns the other arguments. Everything after
// "--" is an argument.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// commandFlags parses a command's arguments with the global flags and the
// command's own (added by add), and checks the number of positional
// arguments is within [min, max] (max < 0: no limit). If it returns false,
// the command exits with code.
func commandFlags(cfg *config, name, synopsis string, args []string, stderr io.Writer, min, max int, add func(*flag.FlagSet)) (pos []string, code int, ok bool) {
	fs := cfg.flagSet("tokencache "+name, stderr)
	if add != nil {
		add(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tokencache %s %s\n", name, synopsis)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, helpOrError(err), false
	}
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		fmt.Fprintf(stderr, "tokencache %s: want %s, got %q\n", name, synopsis, strings.Join(pos, " "))
		fs.Usage()
		return nil, exitError, false
	}
	return pos, exitOK, true
}
