package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// printStatus writes st as aligned lines, one per key.
func printStatus(stdout, stderr io.Writer, st *status) int {
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%s\t"+format+"\n", append([]any{label}, args...)...)
	}
	line("credential", "%s (prefix %q)", st.Name, st.Prefix)
	line("token", "%s", describeToken(st.Token, st.Fence))
	line("fence", "%s", describeFence(st.Fence))
	line("lock", "%s", describeLock(st.Lock))
	line("backoff", "%s", describeBackoff(st.Backoff))
	line("order", "%s", describeOrder(st.Order))
	line("refresh", "%s", describeRefresh(st.Refresh))
	switch {
	case st.LimitsProblem != "":
		line("limits", "%s", st.LimitsProblem)
	case len(st.Limits) == 0:
		line("limits", "none")
	}
	for _, l := range st.Limits {
		line("limit", "%s", describeLimit(l))
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintf(stderr, "tokencache: %v\n", err)
		return exitError
	}
	return exitOK
}

func ms(n int64) time.Duration { return time.Duration(n) * time.Millisecond }

// ttl describes a PTTL reply in milliseconds.
func ttl(n int64) string {
	if n == -1 {
		return "no expiry"
	}
	return ms(max(n, 0)).String() + " left"
}

// withProblem appends a problem to a description.
func withProblem(s, problem string) string {
	if problem == "" {
		return s
	}
	if s == "" {
		return problem
	}
	return s + "; " + problem
}

func describeToken(t *tokenState, f *fenceState) string {
	if t == nil {
		if f != nil && f.Written > 0 && f.Written == f.Invalidated {
			return fmt.Sprintf("none (version %d was invalidated)", f.Written)
		}
		return "none"
	}
	if t.Version == 0 {
		return withProblem(ttl(t.TTLMS), t.Problem)
	}
	s := fmt.Sprintf("version %d%s, %s of %v", t.Version, issued(t.Version), ttl(t.TTLMS), ms(t.LifetimeMS))
	if t.Sealed {
		s += fmt.Sprintf(", sealed with key %q", t.KeyID)
	} else {
		s += ", sha256 " + t.Fingerprint
	}
	return withProblem(s, t.Problem)
}

// issued reads a version as the server time it was issued at: versions
// are at least the issuing server's clock in milliseconds.
func issued(version int64) string {
	at := time.UnixMilli(version).UTC()
	if at.Year() < 2000 || at.Year() > 2200 {
		return ""
	}
	return " (issued ≈ " + at.Format(time.RFC3339) + ")"
}

func describeFence(f *fenceState) string {
	if f == nil {
		return "none"
	}
	s := fmt.Sprintf("written %d, next %d, invalidated %d", f.Written, f.Next, f.Invalidated)
	if f.Identity != "" {
		s += ", identity " + f.Identity
	}
	return withProblem(s, f.Problem)
}

func describeLock(l *lockState) string {
	if l == nil {
		return "free"
	}
	holder := l.Holder
	if holder == "" && l.Problem == "" {
		holder = "(a holder that does not name itself: an older release)"
	}
	s := ""
	if holder != "" {
		s = "held by " + holder + ", "
	}
	return withProblem(s+ttl(l.TTLMS), l.Problem)
}

func describeBackoff(b *backoffState) string {
	if b == nil {
		return "none"
	}
	parts := []string{fmt.Sprintf("%d failures", b.Failures)}
	if b.RemainingMS > 0 {
		parts = append(parts, fmt.Sprintf("no fetch for %v", ms(b.RemainingMS)))
	} else {
		parts = append(parts, "over (the count stays until a success)")
	}
	for _, kv := range [][2]string{{"class", b.Class}, {"code", b.Code}, {"identity", b.Identity}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+" "+kv[1])
		}
	}
	return withProblem(strings.Join(parts, ", "), b.Problem)
}

func describeOrder(o *orderState) string {
	if o == nil {
		return "none"
	}
	if o.Problem != "" {
		return withProblem(ttl(o.TTLMS), o.Problem)
	}
	return fmt.Sprintf("%d, %s", o.Order, ttl(o.TTLMS))
}

func describeRefresh(r *refreshState) string {
	if r == nil {
		return "none"
	}
	s := fmt.Sprintf("generation %d, ", r.Generation)
	if r.Present {
		s += "state present (not shown)"
	} else {
		s += "state deleted (SeedRefresh stores a new one)"
	}
	return withProblem(s, r.Problem)
}

func describeLimit(l limitState) string {
	if l.Problem != "" {
		return l.Action + ": " + l.Problem
	}
	s := fmt.Sprintf("%s: %d on %s", l.Action, l.Count, l.Day)
	if l.LastAgoMS > 0 {
		s += fmt.Sprintf(", last %v ago", ms(l.LastAgoMS).Round(time.Second))
	}
	return s
}
