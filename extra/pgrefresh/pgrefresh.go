package pgrefresh

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/tokencache/tokencache/token"
)

// DefaultTable is the table a Store uses unless Options.Table names another.
const DefaultTable = "tokencache_refresh"

// MaxNameLen is the longest credential name, in bytes (as in package
// rediscache, so that one name serves both).
const MaxNameLen = 200

// maxIdentLen is PostgreSQL's longest identifier (NAMEDATALEN-1).
const maxIdentLen = 63

// ErrInvalidName is returned for a credential name that is empty, longer
// than MaxNameLen, not valid UTF-8, or holds white space or control
// characters.
var ErrInvalidName = errors.New("pgrefresh: invalid credential name")

// ErrInvalidOptions is returned by New for Options it cannot use.
var ErrInvalidOptions = errors.New("pgrefresh: invalid options")

// ErrEmptyValue is returned by SeedRefresh and CommitRefresh for an empty
// refresh value: a Source never stores one, and it could not be told from
// a missing state by every RefreshStore.
var ErrEmptyValue = errors.New("pgrefresh: empty refresh value")

// Options configure a Store. The zero value is ready to use.
type Options struct {
	// Table is the table that holds the states: a name, or schema.name,
	// each part of lowercase ASCII letters, digits and underscores, not
	// starting with a digit, at most 63 bytes. It is quoted in every
	// statement. Default DefaultTable, in the connection's search_path.
	Table string

	// SynchronousCommit, if set, is the synchronous_commit level that
	// SeedRefresh, CommitRefresh and DeleteRefresh commit with, whatever
	// the server or role sets: "on", "local", "remote_write" or
	// "remote_apply". Each write then runs in a transaction of its own
	// (four round trips instead of one). Empty uses the server's setting,
	// "on" by default. "off" is refused: it may lose a committed state in
	// a server crash.
	SynchronousCommit string
}

// A Store keeps the refresh states of many credentials in one table. It is
// safe for concurrent use; so are its Credentials.
type Store struct {
	db    *sql.DB
	opts  Options
	table string // quoted

	load, commit, seed, del, schema string // statements
}

// New returns a Store on db, which it does not close. It does not touch
// the database: call CreateTable, or create the table with Schema.
func New(db *sql.DB, opts Options) (*Store, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *sql.DB", ErrInvalidOptions)
	}
	if opts.Table == "" {
		opts.Table = DefaultTable
	}
	table, err := quoteTable(opts.Table)
	if err != nil {
		return nil, err
	}
	switch opts.SynchronousCommit {
	case "", "on", "local", "remote_write", "remote_apply":
	default:
		return nil, fmt.Errorf("%w: SynchronousCommit %q (want on, local, remote_write or remote_apply)", ErrInvalidOptions, opts.SynchronousCommit)
	}
	return &Store{
		db:    db,
		opts:  opts,
		table: table,
		load:  `SELECT generation, value FROM ` + table + ` WHERE credential = $1`,
		commit: `UPDATE ` + table + ` SET generation = generation + 1, value = $3, updated_at = now()
			WHERE credential = $1 AND generation = $2 AND value IS NOT NULL`,
		seed: `INSERT INTO ` + table + ` AS r (credential, generation, value, updated_at) VALUES ($1, 1, $2, now())
			ON CONFLICT (credential) DO UPDATE SET generation = r.generation + 1, value = EXCLUDED.value, updated_at = now()
			RETURNING generation`,
		del: `UPDATE ` + table + ` SET value = NULL, updated_at = now() WHERE credential = $1 AND value IS NOT NULL`,
		schema: `CREATE TABLE IF NOT EXISTS ` + table + ` (
	credential text PRIMARY KEY,
	generation bigint NOT NULL,
	value bytea,
	updated_at timestamptz NOT NULL DEFAULT now()
)`,
	}, nil
}

// quoteTable checks a table name (name or schema.name) and quotes it.
func quoteTable(name string) (string, error) {
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return "", fmt.Errorf("%w: Table %q: want name or schema.name", ErrInvalidOptions, name)
	}
	for i, p := range parts {
		if !validIdent(p) {
			return "", fmt.Errorf("%w: Table %q: each part must match [a-z_][a-z0-9_]* and be at most %d bytes", ErrInvalidOptions, name, maxIdentLen)
		}
		parts[i] = `"` + p + `"`
	}
	return strings.Join(parts, "."), nil
}

func validIdent(s string) bool {
	if s == "" || len(s) > maxIdentLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Schema returns the CREATE TABLE IF NOT EXISTS statement of the Store's
// table, for a migration tool.
func (s *Store) Schema() string { return s.schema }

// CreateTable creates the Store's table unless it exists. Concurrent calls,
// from any process, are safe: they are serialized by a transaction-scoped
// advisory lock on the table's name.
func (s *Store) CreateTable(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("pgrefresh: create table %s: %w", s.table, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	// CREATE TABLE IF NOT EXISTS alone can fail with a unique violation
	// in the catalog when two sessions race.
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "tokencache:"+s.table); err != nil {
		return fmt.Errorf("pgrefresh: create table %s: %w", s.table, err)
	}
	if _, err := tx.ExecContext(ctx, s.schema); err != nil {
		return fmt.Errorf("pgrefresh: create table %s: %w", s.table, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("pgrefresh: create table %s: %w", s.table, err)
	}
	return nil
}

// Credential returns the token.RefreshStore of one credential, for
// token.Options.RefreshStore. name is the credential's name, as given to
// rediscache (which takes the same names); it is stored as the row's key.
func (s *Store) Credential(name string) (*Credential, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	return &Credential{s: s, name: name}, nil
}

// RefreshStore is Credential as a token.RefreshStore, for
// rediscache.Options.RefreshStores:
//
//	cache, err := rediscache.New(rdb, rediscache.Options{RefreshStores: store.RefreshStore})
func (s *Store) RefreshStore(name string) (token.RefreshStore, error) {
	c, err := s.Credential(name)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func validName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: length %d (want 1 to %d)", ErrInvalidName, len(name), MaxNameLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidName, name)
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("%w: %q holds %q", ErrInvalidName, name, r)
		}
	}
	return nil
}

// Credential is the refresh state of one credential: a token.RefreshStore.
// Errors name the credential and the operation, never the value.
type Credential struct {
	s    *Store
	name string
}

var _ token.RefreshStore = (*Credential)(nil)

// Name returns the credential's name.
func (c *Credential) Name() string { return c.name }

// LoadRefresh returns the stored state, or an error wrapping
// token.ErrNoRefreshState if the credential was never seeded or its state
// was deleted.
func (c *Credential) LoadRefresh(ctx context.Context) (token.RefreshState, error) {
	var (
		gen   int64
		value sql.Null[[]byte]
	)
	err := c.s.db.QueryRowContext(ctx, c.s.load, c.name).Scan(&gen, &value)
	switch {
	case errors.Is(err, sql.ErrNoRows) || err == nil && !value.Valid:
		return token.RefreshState{}, fmt.Errorf("pgrefresh: %s: %w", c.name, token.ErrNoRefreshState)
	case err != nil:
		return token.RefreshState{}, c.fail("load refresh state", err)
	}
	return token.RefreshState{Value: string(value.V), Generation: gen}, nil
}

// CommitRefresh stores next as generation gen+1 if the stored generation
// is gen. Otherwise (a newer generation, a deleted state, or none) it
// returns an error wrapping token.ErrFenced and changes nothing.
func (c *Credential) CommitRefresh(ctx context.Context, gen int64, next string) error {
	if next == "" {
		return fmt.Errorf("pgrefresh: %s: commit refresh state: %w", c.name, ErrEmptyValue)
	}
	var n int64
	err := c.write(ctx, func(ctx context.Context, q querier) error {
		res, err := q.ExecContext(ctx, c.s.commit, c.name, gen, []byte(next))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return c.fail("commit refresh state", err)
	}
	if n == 0 {
		return fmt.Errorf("pgrefresh: %s: commit refresh state of generation %d: %w", c.name, gen, token.ErrFenced)
	}
	return nil
}

// SeedRefresh stores value as the first state of a new authorization and
// returns its generation: 1 for a credential never seeded, else one more
// than the stored generation (kept after DeleteRefresh), which fences
// every commit of an older one.
func (c *Credential) SeedRefresh(ctx context.Context, value string) (int64, error) {
	if value == "" {
		return 0, fmt.Errorf("pgrefresh: %s: seed refresh state: %w", c.name, ErrEmptyValue)
	}
	var gen int64
	err := c.write(ctx, func(ctx context.Context, q querier) error {
		return q.QueryRowContext(ctx, c.s.seed, c.name, []byte(value)).Scan(&gen)
	})
	if err != nil {
		return 0, c.fail("seed refresh state", err)
	}
	return gen, nil
}

// DeleteRefresh removes the state (the authorization was revoked), keeping
// its generation in a tombstone. Deleting a state that does not exist is
// not an error.
func (c *Credential) DeleteRefresh(ctx context.Context) error {
	err := c.write(ctx, func(ctx context.Context, q querier) error {
		_, err := q.ExecContext(ctx, c.s.del, c.name)
		return err
	})
	if err != nil {
		return c.fail("delete refresh state", err)
	}
	return nil
}

// querier is what *sql.DB and *sql.Tx share.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// write runs one write statement: on its own, or with
// Options.SynchronousCommit in a transaction that sets it.
func (c *Credential) write(ctx context.Context, stmt func(context.Context, querier) error) error {
	level := c.s.opts.SynchronousCommit
	if level == "" {
		return stmt(ctx, c.s.db)
	}
	tx, err := c.s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if _, err := tx.ExecContext(ctx, `SELECT set_config('synchronous_commit', $1, true)`, level); err != nil {
		return err
	}
	if err := stmt(ctx, tx); err != nil {
		return err
	}
	return tx.Commit()
}

// fail wraps a driver error. Statements pass the value as a bytea
// parameter and declare no constraint it could violate, so no server
// message quotes it.
func (c *Credential) fail(op string, err error) error {
	return fmt.Errorf("pgrefresh: %s: %s: %w", c.name, op, err)
}
