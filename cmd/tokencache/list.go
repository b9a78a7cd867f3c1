package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// listed is one credential in list -json: its name and which of its keys
// exist ("token", "refresh", "limit:<action>", ...).
type listed struct {
	Name string   `json:"name"`
	Keys []string `json:"keys"`
}

// runList prints the names of the credentials under the prefix, sorted,
// one a line: every name with any of rediscache's keys, so that one whose
// token expired but whose refresh state or backoff remains is listed too.
func runList(ctx context.Context, cfg *config, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	if _, code, ok := commandFlags(cfg, "list", "[-json]", args, stderr, 0, 0, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON: [{name, keys}]")
	}); !ok {
		return code
	}
	c, code := connect(ctx, cfg, stderr)
	if c == nil {
		return code
	}
	defer c.rdb.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	creds, err := list(ctx, c, cfg.prefix)
	if err != nil {
		fmt.Fprintf(stderr, "tokencache list: SCAN on %s: %v\n", c.addr, err)
		return exitError
	}
	if len(creds) == 0 {
		fmt.Fprintf(stderr, "tokencache: no credentials under prefix %q on %s\n", cfg.prefix, c.addr)
		return exitNothing
	}
	if asJSON {
		return writeJSON(stdout, stderr, creds)
	}
	for _, l := range creds {
		fmt.Fprintln(stdout, l.Name)
	}
	return exitOK
}

// list scans every primary for the prefix's keys and groups them by name.
func list(ctx context.Context, c *conn, prefix string) ([]listed, error) {
	keys := map[string][]string{}
	err := c.scan(ctx, "{"+globEscape(prefix)+"*}:*", func(key string) {
		if name, kind, ok := splitKey(prefix, key); ok && !slices.Contains(keys[name], kind) {
			keys[name] = append(keys[name], kind)
		}
	})
	if err != nil {
		return nil, err
	}
	out := make([]listed, 0, len(keys))
	for name, kinds := range keys {
		slices.Sort(kinds)
		out = append(out, listed{Name: name, Keys: kinds})
	}
	slices.SortFunc(out, func(a, b listed) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// connect dials Redis and reports a failure on stderr; it returns nil and
// the exit code if it failed.
func connect(ctx context.Context, cfg *config, stderr io.Writer) (*conn, int) {
	if err := checkPrefix(cfg.prefix); err != nil {
		fmt.Fprintf(stderr, "tokencache: -prefix: %v\n", err)
		return nil, exitError
	}
	c, err := dial(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "tokencache: %v\n", err)
		return nil, exitError
	}
	return c, exitOK
}

func writeJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "tokencache: %v\n", err)
		return exitError
	}
	return exitOK
}
