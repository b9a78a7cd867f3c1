package pgrefresh_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokencache/tokencache/extra/pgrefresh"
	"github.com/tokencache/tokencache/token"
	"github.com/tokencache/tokencache/token/tokentest"
)

// pools is how many *sql.DB a test opens: handles on one credential
// alternate between them, as separate processes would connect.
const pools = 3

// uniqueName is a credential (or table) name no other test run uses.
func uniqueName(prefix string) string {
	return prefix + "_" + strings.ToLower(rand.Text()[:10])
}

// stores opens pools *sql.DB and a Store with opts on each, creating the
// table.
func stores(t *testing.T, opts pgrefresh.Options) []*pgrefresh.Store {
	t.Helper()
	ss := make([]*pgrefresh.Store, pools)
	for i := range ss {
		s, err := pgrefresh.New(openDB(t), opts)
		if err != nil {
			t.Fatal(err)
		}
		ss[i] = s
	}
	if err := ss[0].CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	return ss
}

func credential(t *testing.T, s *pgrefresh.Store, name string) *pgrefresh.Credential {
	t.Helper()
	c, err := s.Credential(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// harness makes credentials whose handles alternate between the pools.
func harness(ss []*pgrefresh.Store) tokentest.RefreshHarness {
	return tokentest.RefreshHarness{
		New: func(t *testing.T) tokentest.RefreshCredential {
			name := uniqueName("cred")
			var i int
			return tokentest.RefreshCredential{Open: func() token.RefreshStore {
				i++
				return credential(t, ss[i%len(ss)], name)
			}}
		},
		// No Advance: PostgreSQL has no TTL to make pass.
	}
}

// TestConformance runs the RefreshStore suite on a real PostgreSQL, each
// credential's handles on several connection pools.
func TestConformance(t *testing.T) {
	tokentest.TestRefreshStore(t, harness(stores(t, pgrefresh.Options{})))
}

// TestConformanceSynchronousCommit runs it again with a schema-qualified
// table and SynchronousCommit, whose writes run in transactions.
func TestConformanceSynchronousCommit(t *testing.T) {
	db := openDB(t)
	schema := uniqueName("tc")
	if _, err := db.ExecContext(t.Context(), `CREATE SCHEMA `+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), `DROP SCHEMA `+schema+` CASCADE`) })
	// remote_apply without synchronous standbys commits as "on".
	opts := pgrefresh.Options{Table: schema + ".refresh", SynchronousCommit: "remote_apply"}
	tokentest.TestRefreshStore(t, harness(stores(t, opts)))
}

// TestRefreshChain: instances on separate pools refresh in a loop, each
// redeeming what it loaded and committing the next state; every success
// extends one unbroken chain, and every failure is a fenced commit.
func TestRefreshChain(t *testing.T) {
	const (
		goroutines = 4 // per pool
		commits    = 150
	)
	ss := stores(t, pgrefresh.Options{})
	name := uniqueName("chain")
	g0, err := credential(t, ss[0], name).SeedRefresh(t.Context(), "chain-0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		chain  = map[int64]string{g0: "chain-0"} // generation → value
		parent = map[string]string{}             // value → the value it replaced
		fenced int
		wg     sync.WaitGroup
	)
	for _, s := range ss {
		c := credential(t, s, name)
		for range goroutines {
			wg.Go(func() {
				for {
					mu.Lock()
					done := len(chain) > commits
					mu.Unlock()
					if done {
						return
					}
					st, err := c.LoadRefresh(t.Context())
					if err != nil {
						t.Errorf("LoadRefresh: %v", err)
						return
					}
					next := fmt.Sprint("chain-", rand.Text())
					switch err := c.CommitRefresh(t.Context(), st.Generation, next); {
					case err == nil:
						mu.Lock()
						if prev, dup := chain[st.Generation+1]; dup {
							t.Errorf("generation %d committed twice (%s and %s)", st.Generation+1, prev, next)
						}
						chain[st.Generation+1] = next
						parent[next] = st.Value
						mu.Unlock()
					case errors.Is(err, token.ErrFenced):
						mu.Lock()
						fenced++
						mu.Unlock()
					default:
						t.Errorf("CommitRefresh: %v", err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	last := g0 + int64(len(chain)) - 1
	st, err := credential(t, ss[1], name).LoadRefresh(t.Context())
	if err != nil || st.Generation != last || st.Value != chain[last] {
		t.Fatalf("LoadRefresh = generation %d, %v; want the last commit, generation %d", st.Generation, err, last)
	}
	for g := g0 + 1; g <= last; g++ {
		if parent[chain[g]] != chain[g-1] {
			t.Fatalf("generation %d replaced %q, not generation %d's %q", g, parent[chain[g]], g-1, chain[g-1])
		}
	}
	t.Logf("%d commits in one chain, %d fenced, from %d goroutines on %d pools", len(chain)-1, fenced, goroutines*pools, pools)
}

// TestSurvivesRestart: committed state is kept across a crash of the
// server (an immediate shutdown, recovered from the WAL) and a clean
// restart.
func TestSurvivesRestart(t *testing.T) {
	dsn(t)
	if server == nil {
		t.Skipf("needs the server the tests start (%s is set)", dsnEnv)
	}
	ctx := t.Context()
	before := stores(t, pgrefresh.Options{})[0]
	name := uniqueName("durable")
	c := credential(t, before, name)
	g, err := c.SeedRefresh(ctx, "seeded")
	if err != nil {
		t.Fatal(err)
	}
	value := "committed-\x00-" + rand.Text()
	if err := c.CommitRefresh(ctx, g, value); err != nil {
		t.Fatal(err)
	}
	deleted := credential(t, before, uniqueName("deleted"))
	dg, err := deleted.SeedRefresh(ctx, "to delete")
	if err != nil {
		t.Fatal(err)
	}
	if err := deleted.DeleteRefresh(ctx); err != nil {
		t.Fatal(err)
	}

	for _, restart := range []struct {
		name string
		sig  syscall.Signal
	}{{"crash", syscall.SIGQUIT}, {"clean", syscall.SIGINT}} {
		server.stop(restart.sig)
		if err := server.start(); err != nil {
			t.Fatalf("restart after a %s shutdown: %v", restart.name, err)
		}
		after, err := pgrefresh.New(openDB(t), pgrefresh.Options{})
		if err != nil {
			t.Fatal(err)
		}
		st, err := credential(t, after, name).LoadRefresh(ctx)
		if err != nil || st.Generation != g+1 || st.Value != value {
			t.Fatalf("after a %s restart: LoadRefresh = generation %d, %v; want generation %d, the committed value", restart.name, st.Generation, err, g+1)
		}
		// The tombstone survives too: a new seed is newer than the deleted.
		d := credential(t, after, deleted.Name())
		if _, err := d.LoadRefresh(ctx); !errors.Is(err, token.ErrNoRefreshState) {
			t.Fatalf("after a %s restart: LoadRefresh of the deleted state = %v; want ErrNoRefreshState", restart.name, err)
		}
		ng, err := d.SeedRefresh(ctx, "reseeded")
		if err != nil || ng <= dg {
			t.Fatalf("after a %s restart: SeedRefresh of the deleted credential = %d, %v; want a generation above %d", restart.name, ng, err, dg)
		}
		if err := d.DeleteRefresh(ctx); err != nil {
			t.Fatal(err)
		}
		dg = ng
	}
}

// TestContext: a cancelled context ends an operation at once, even one
// waiting on a row lock, and (once the driver has cancelled it on the
// server) the state stays as it was.
func TestContext(t *testing.T) {
	ss := stores(t, pgrefresh.Options{})
	name := uniqueName("ctx")
	c := credential(t, ss[0], name)
	g, err := c.SeedRefresh(t.Context(), "kept")
	if err != nil {
		t.Fatal(err)
	}

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.CommitRefresh(cancelled, g, "secret-next"); !errors.Is(err, context.Canceled) {
		t.Errorf("CommitRefresh with a cancelled context = %v; want context.Canceled", err)
	}
	if _, err := c.LoadRefresh(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("LoadRefresh with a cancelled context = %v; want context.Canceled", err)
	}

	// Another session holds the row: the commit waits until its deadline.
	tx, err := openDB(t).BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() //nolint:errcheck
	if _, err := tx.ExecContext(t.Context(), `SELECT 1 FROM tokencache_refresh WHERE credential = $1 FOR UPDATE`, name); err != nil {
		t.Fatal(err)
	}
	for _, op := range []struct {
		name string
		do   func(context.Context) error
	}{
		{"CommitRefresh", func(ctx context.Context) error {
			return credential(t, ss[1], name).CommitRefresh(ctx, g, "secret-next")
		}},
		{"SeedRefresh", func(ctx context.Context) error {
			_, err := credential(t, ss[2], name).SeedRefresh(ctx, "secret-seed")
			return err
		}},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		start := time.Now()
		err := op.do(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s blocked on a row lock past its deadline = %v; want context.DeadlineExceeded", op.name, err)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s error holds the value: %v", op.name, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s returned %v after its 200ms deadline", op.name, d)
		}
	}
	// The driver cancels a statement on the server asynchronously (pgx
	// sends a cancel request after the call returned): wait until no
	// statement waits on the row, else releasing it could let one run.
	// Until then, what a cancelled write did is unknown.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		if err := tx.QueryRowContext(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d cancelled statements still wait on the row lock after 10s", waiting)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	st, err := c.LoadRefresh(t.Context())
	if err != nil || st.Generation != g || st.Value != "kept" {
		t.Fatalf("LoadRefresh after cancelled writes = %q, %d, %v; want %q, %d", st.Value, st.Generation, err, "kept", g)
	}
}

// TestErrorsHideValue: errors name the credential and never the value,
// also when the driver fails.
func TestErrorsHideValue(t *testing.T) {
	db := openDB(t)
	s, err := pgrefresh.New(db, pgrefresh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	name := uniqueName("errs")
	c := credential(t, s, name)
	g, err := c.SeedRefresh(t.Context(), "secret-seed")
	if err != nil {
		t.Fatal(err)
	}
	err = c.CommitRefresh(t.Context(), g+5, "secret-fenced")
	if !errors.Is(err, token.ErrFenced) || !strings.Contains(err.Error(), name) || strings.Contains(err.Error(), "secret") {
		t.Errorf("fenced CommitRefresh = %v; want ErrFenced naming the credential, not the value", err)
	}
	_ = db.Close()
	for _, err := range []error{
		c.CommitRefresh(t.Context(), g, "secret-closed"),
		func() error { _, err := c.SeedRefresh(t.Context(), "secret-closed"); return err }(),
		func() error { _, err := c.LoadRefresh(t.Context()); return err }(),
	} {
		if err == nil || errors.Is(err, token.ErrFenced) || strings.Contains(err.Error(), "secret") {
			t.Errorf("an operation on a closed *sql.DB = %v; want an error, not ErrFenced, without the value", err)
		}
	}
}

// TestTombstone: DeleteRefresh keeps the row, value NULL, with its
// generation (the documented schema).
func TestTombstone(t *testing.T) {
	db := openDB(t)
	s, err := pgrefresh.New(db, pgrefresh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	c := credential(t, s, uniqueName("tomb"))
	g, err := c.SeedRefresh(t.Context(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRefresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	var (
		gen   int64
		value sql.Null[[]byte]
	)
	row := db.QueryRowContext(t.Context(), `SELECT generation, value FROM tokencache_refresh WHERE credential = $1`, c.Name())
	if err := row.Scan(&gen, &value); err != nil || gen != g || value.Valid {
		t.Fatalf("the deleted row = generation %d, value valid %v, %v; want generation %d, value NULL", gen, value.Valid, err, g)
	}
}

// TestEmptyValue: empty values are refused, and nothing is stored.
func TestEmptyValue(t *testing.T) {
	s, err := pgrefresh.New(openDB(t), pgrefresh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	c := credential(t, s, uniqueName("empty"))
	if _, err := c.SeedRefresh(t.Context(), ""); !errors.Is(err, pgrefresh.ErrEmptyValue) {
		t.Errorf("SeedRefresh(\"\") = %v; want ErrEmptyValue", err)
	}
	g, err := c.SeedRefresh(t.Context(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CommitRefresh(t.Context(), g, ""); !errors.Is(err, pgrefresh.ErrEmptyValue) {
		t.Errorf("CommitRefresh(%d, \"\") = %v; want ErrEmptyValue", g, err)
	}
	if st, err := c.LoadRefresh(t.Context()); err != nil || st != (token.RefreshState{Value: "v", Generation: g}) {
		t.Errorf("LoadRefresh = %+v, %v; want v, generation %d", st, err, g)
	}
}

// TestCreateTableConcurrently: CreateTable from many pools at once, on a
// table that does not exist yet, succeeds everywhere.
func TestCreateTableConcurrently(t *testing.T) {
	table := uniqueName("created")
	db := openDB(t)
	t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), `DROP TABLE IF EXISTS `+table) })
	var wg sync.WaitGroup
	for range 6 {
		s, err := pgrefresh.New(openDB(t), pgrefresh.Options{Table: table})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if err := s.CreateTable(t.Context()); err != nil {
				t.Errorf("concurrent CreateTable: %v", err)
			}
		})
	}
	wg.Wait()
}

// TestInvalid: names and options New and Credential refuse (no server).
func TestInvalid(t *testing.T) {
	db, err := sql.Open("pgx", "postgres://127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := pgrefresh.New(nil, pgrefresh.Options{}); !errors.Is(err, pgrefresh.ErrInvalidOptions) {
		t.Errorf("New(nil) = %v; want ErrInvalidOptions", err)
	}
	for _, table := range []string{
		"Upper", `quo"te`, "a.b.c", "1st", "with space", "semi;colon", "a.", ".a", "dash-ed",
		strings.Repeat("x", 64), "ünï",
	} {
		if _, err := pgrefresh.New(db, pgrefresh.Options{Table: table}); !errors.Is(err, pgrefresh.ErrInvalidOptions) {
			t.Errorf("New with Table %q = %v; want ErrInvalidOptions", table, err)
		}
	}
	for _, level := range []string{"off", "ON", "remote"} {
		if _, err := pgrefresh.New(db, pgrefresh.Options{SynchronousCommit: level}); !errors.Is(err, pgrefresh.ErrInvalidOptions) {
			t.Errorf("New with SynchronousCommit %q = %v; want ErrInvalidOptions", level, err)
		}
	}
	for _, table := range []string{"", "t", "_x9", "myschema.my_table", strings.Repeat("x", 63)} {
		s, err := pgrefresh.New(db, pgrefresh.Options{Table: table})
		if err != nil {
			t.Errorf("New with Table %q: %v", table, err)
			continue
		}
		if table == "" {
			table = pgrefresh.DefaultTable
		}
		want := `"` + strings.ReplaceAll(table, ".", `"."`) + `"`
		if !strings.Contains(s.Schema(), "CREATE TABLE IF NOT EXISTS "+want+" (") {
			t.Errorf("Schema with Table %q = %s; want the quoted table %s", table, s.Schema(), want)
		}
	}

	s, err := pgrefresh.New(db, pgrefresh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", strings.Repeat("n", pgrefresh.MaxNameLen+1), "a b", "tab\t", "nl\n", "nul\x00", "del\x7f", "\xff", "c1\u0085"} {
		if _, err := s.Credential(name); !errors.Is(err, pgrefresh.ErrInvalidName) {
			t.Errorf("Credential(%q) = %v; want ErrInvalidName", name, err)
		}
	}
	for _, name := range []string{"x", "wechat:wx0123", "app/{tenant}", "令牌", strings.Repeat("n", pgrefresh.MaxNameLen)} {
		if c, err := s.Credential(name); err != nil || c.Name() != name {
			t.Errorf("Credential(%q) = %v; want it accepted", name, err)
		}
	}
}
