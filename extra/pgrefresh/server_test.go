package pgrefresh_test

// A throwaway PostgreSQL server for the tests, unless TOKENCACHE_PG_DSN
// names one: initdb into a temporary directory, postgres on 127.0.0.1 and
// a free port with trust authentication, stopped when the tests end. As
// root, both run as the postgres system user (PostgreSQL refuses root).
// Without the binaries the tests skip, unless CI or TOKENCACHE_REQUIRE_PG=1
// says they must run.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

const (
	dsnEnv     = "TOKENCACHE_PG_DSN"
	requireEnv = "TOKENCACHE_REQUIRE_PG"
)

// pgRequired reports whether the environment says the tests must run.
func pgRequired() bool {
	ci := strings.ToLower(os.Getenv("CI"))
	return os.Getenv(requireEnv) == "1" || (ci != "" && ci != "0" && ci != "false")
}

// pgServer is a postgres process the tests started.
type pgServer struct {
	bin  string // directory of initdb and postgres
	dir  string // removed at the end; holds data, sock, log
	port int
	cred *syscall.Credential // the postgres user's, when run as root
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd has exited
	dsn  string
}

var (
	serverOnce sync.Once
	server     *pgServer // nil with an external server (TOKENCACHE_PG_DSN)
	serverDSN  string
	serverErr  error // why there is no server; serverSkip: a missing tool
	serverSkip bool
)

func TestMain(m *testing.M) {
	code := m.Run()
	if server != nil {
		server.stop(syscall.SIGINT) // fast shutdown
		_ = os.RemoveAll(server.dir)
	}
	os.Exit(code)
}

// dsn returns the data source name of the test server, starting it on
// first use, or skips (fails where required) the test.
func dsn(t *testing.T) string {
	t.Helper()
	serverOnce.Do(func() {
		if d := os.Getenv(dsnEnv); d != "" {
			serverDSN = d
			return
		}
		server, serverSkip, serverErr = startServer()
		if server != nil {
			serverDSN = server.dsn
		}
	})
	switch {
	case serverErr == nil:
		return serverDSN
	case serverSkip && !pgRequired():
		t.Skipf("no PostgreSQL: %v (set %s, or install postgresql; CI or %s=1 makes this a failure)", serverErr, dsnEnv, requireEnv)
	case serverSkip:
		t.Fatalf("no PostgreSQL: %v; CI or %s=1 requires the PostgreSQL tests to run", serverErr, requireEnv)
	default:
		t.Fatalf("starting PostgreSQL: %v", serverErr)
	}
	return ""
}

// openDB opens a pool on the test server, closed when the test ends.
func openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", dsn(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// pgBin finds the directory of initdb and postgres: Debian's newest
// /usr/lib/postgresql/N/bin, else PATH.
func pgBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		return "", errors.New("initdb is neither in /usr/lib/postgresql/*/bin nor on PATH")
	}
	d := filepath.Dir(initdb)
	if !isExec(filepath.Join(d, "postgres")) {
		return "", fmt.Errorf("no postgres beside %s", initdb)
	}
	return d, nil
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// startServer runs initdb and starts postgres. skip reports that a tool or
// the postgres user is missing, rather than a failure.
func startServer() (s *pgServer, skip bool, err error) {
	bin, err := pgBin()
	if err != nil {
		return nil, true, err
	}
	s = &pgServer{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, true, fmt.Errorf("running as root needs the postgres system user to run PostgreSQL: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Not t.TempDir: its parent is private to root.
	if s.dir, err = os.MkdirTemp("", "pgrefresh-test-"); err != nil {
		return nil, false, err
	}
	defer func() {
		if err != nil {
			if s.cmd != nil {
				s.stop(syscall.SIGQUIT)
			}
			_ = os.RemoveAll(s.dir)
		}
	}()
	if err := os.Mkdir(filepath.Join(s.dir, "sock"), 0o700); err != nil {
		return nil, false, err
	}
	if s.cred != nil {
		for _, p := range []string{s.dir, filepath.Join(s.dir, "sock")} {
			if err := os.Chown(p, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
				return nil, false, err
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	initdb := s.command(ctx, "initdb", "-D", s.data(), "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, false, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if s.port, err = freePort(); err != nil {
		return nil, false, err
	}
	s.dsn = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	if err := s.start(); err != nil {
		return nil, false, err
	}
	return s, false, nil
}

func (s *pgServer) data() string { return filepath.Join(s.dir, "data") }

// command runs a PostgreSQL binary, as the postgres user when root.
func (s *pgServer) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	return cmd
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start starts postgres on the data directory and waits until it accepts
// connections. fsync is off: the tests crash the server process, never
// the machine, and the operating system keeps what was written.
func (s *pgServer) start() error {
	log, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := s.command(context.Background(), "postgres", "-D", s.data(),
		"-c", "listen_addresses=127.0.0.1", "-p", strconv.Itoa(s.port), "-k", filepath.Join(s.dir, "sock"),
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "shared_buffers=16MB", "-c", "max_connections=60")
	cmd.Stdout, cmd.Stderr = log, log
	// An immediate shutdown if the test process dies without stopping it.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd, s.exit = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.exit) }()

	db, err := sql.Open("pgx", s.dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := db.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.exit:
			return fmt.Errorf("postgres exited: %v\n%s", cmd.ProcessState, s.log())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within 30s: %v\n%s", err, s.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals postgres (SIGINT: fast shutdown; SIGQUIT: immediate, as
// after a crash, recovered from the WAL on the next start) and waits.
func (s *pgServer) stop(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exit:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exit
	}
	s.cmd = nil
}

func (s *pgServer) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
