// Package pgrefresh keeps rotating refresh state (token.RefreshStore) in
// PostgreSQL, for teams whose Redis is a cache: a Redis FLUSHALL, restart
// or eviction then costs access tokens, which are fetched again, but never
// a refresh token, whose loss means the user must authorize again.
//
// It is a module of its own so that the core module does not depend on a
// PostgreSQL driver. A Store takes a *sql.DB: bring any database/sql driver
// (its tests use github.com/jackc/pgx/v5/stdlib).
//
// # Schema
//
// One row per credential, in a table CreateTable makes (or run
// Store.Schema with your migration tool):
//
//	CREATE TABLE IF NOT EXISTS tokencache_refresh (
//	    credential text PRIMARY KEY,
//	    generation bigint NOT NULL,
//	    value      bytea,                 -- NULL: deleted (a tombstone)
//	    updated_at timestamptz NOT NULL DEFAULT now()
//	)
//
// The value is bytea, so any bytes round-trip. A deleted state stays as a
// tombstone with its generation, so that the next SeedRefresh stores a
// generation greater than any before, as token.RefreshStore requires:
// removing a tombstone by hand lets generations start again at 1, which is
// safe only when no refresher of that credential can still be running.
// The table grows by one row per credential ever seeded.
//
// # Operations
//
// Each is one statement (with Options.SynchronousCommit, in a transaction
// of its own), atomic under PostgreSQL's default READ COMMITTED isolation,
// with no lock held between statements:
//
//   - LoadRefresh: SELECT generation, value WHERE credential = $1; no row or
//     a tombstone is token.ErrNoRefreshState.
//   - CommitRefresh(gen, next): UPDATE … SET generation = generation+1,
//     value = $next WHERE credential = $1 AND generation = $gen AND value IS
//     NOT NULL. A concurrent UPDATE of the row makes the other wait and then
//     re-check its WHERE, so of commits of one generation exactly one
//     succeeds. No row updated is token.ErrFenced, whatever the reason: a
//     newer generation, a tombstone, or no row (the credential was never
//     seeded). The commit is refused in one statement rather than told
//     apart by a second read, which could be stale by the time it returns.
//   - SeedRefresh: INSERT … ON CONFLICT (credential) DO UPDATE SET
//     generation = generation+1: generation 1 for a new credential, else
//     one more than the row's (live or tombstone), fencing every refresher
//     of the previous authorization.
//   - DeleteRefresh: UPDATE … SET value = NULL: a tombstone. Deleting a
//     state that does not exist is not an error.
//
// Empty values are refused: a Source never seeds or commits one.
//
// # Write order
//
// A Source redeems rotating refresh state under the credential's lock, in
// this order:
//
//  1. redeem the stored state at the upstream (it replies with an access
//     token and the next refresh token);
//  2. commit the next state here, durably, compared-and-set on the
//     generation it read (CommitRefresh);
//  3. write the access token to Redis, fenced by its version.
//
// A crash after step 2 loses only the access token: the next refresh
// redeems the committed state. A crash between the upstream's reply (1)
// and the commit (2) loses the new refresh token, and no order closes that
// window; nor can any order stop a second instance that took over a lock
// lost mid-redemption from redeeming the same state. The upstream then
// refuses the old state (OAuth2 invalid_grant, WeChat 61023): the Source
// reports token.ErrRefreshRevoked, a permanent error for that credential,
// and never retries in a loop; only a new authorization (SeedRefresh)
// ends it. The lock lives in Redis: a FLUSHALL or restart of Redis during
// a redemption frees it just the same. Between redemptions, they cost
// only access tokens. Providers with a reuse grace period (a replaced refresh token
// still accepted for a short while) shrink this window to nothing for
// crashes shorter than the grace period.
//
// Every operation honours its context, as the driver does: a cancelled
// or expired context ends the call at once. A write that returns an error
// may still have committed, or still commit: the connection may have
// failed after the server committed, and drivers cancel the statement on
// the server asynchronously (pgx sends a cancel request after the call
// returned). LoadRefresh tells. This is safe: a late commit lands only if
// its generation is still the stored one. A
// fenced commit means another instance committed first, or the credential
// was seeded again or deleted: the stored state wins.
//
// # Durability
//
// A commit is durable once PostgreSQL says so: with synchronous_commit
// on (the server's default), a server crash loses no committed state.
// Options.SynchronousCommit enforces a level per write (for example
// "remote_apply", to wait for synchronous standbys) whatever the server or
// role sets.
package pgrefresh
