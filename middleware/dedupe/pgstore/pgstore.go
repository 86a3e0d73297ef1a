// Package pgstore keeps idempotency records in PostgreSQL
// (github.com/jackc/pgx/v5), in two forms:
//
//   - Store, a broker.IdempotencyStore for the dedupe middleware and for
//     semantics.EffectivelyOnce: one row per key in a table with the key as
//     primary key. Claim inserts the row with a claim token and a lease (or
//     takes over a row whose lease expired) and returns the token, Complete
//     marks it done, Release deletes it while it still holds the caller's
//     token (so a handler whose lease expired cannot release the claim
//     another handler took over since). A crashed consumer's claim expires
//     with its lease; a copy arriving while another is in flight finds the
//     live claim and is deferred.
//   - Inbox, the transactional inbox: the handler gets a transaction in which
//     the inbox also records the message key, and both commit together. So
//     a message's effects and its processed mark are never apart — not even
//     when the process dies between the handler's work and the mark, the
//     one gap a separate store leaves (see broker.Idempotent). A copy
//     arriving while another is being handled is deferred (a transaction-
//     scoped advisory lock says so without waiting), and a crash rolls the
//     transaction back, so the redelivery is handled.
//
// Tables are created if missing (CREATE TABLE IF NOT EXISTS). Done rows stay
// until Purge removes them.
package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// DB is what the stores need of a database handle; *pgxpool.Pool has it (a
// single *pgx.Conn too, but it is not safe for concurrent use).
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Options tune a Store.
type Options struct {
	// Table holds the records, optionally schema-qualified ("app.dedupe");
	// default "queuekit_dedupe".
	Table string
}

// Store is a broker.IdempotencyStore in a PostgreSQL table. It is safe for
// concurrent use.
type Store struct {
	db    DB
	table string // quoted identifier

	claimSQL, stateSQL, completeSQL, releaseSQL, purgeSQL string
}

// New returns a Store over db, creating its table if it does not exist.
func New(ctx context.Context, db DB, opts Options) (*Store, error) {
	const op = "pgstore: new"
	if db == nil {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "db is nil")
	}
	table, err := ident(opts.Table, "queuekit_dedupe")
	if err != nil {
		return nil, broker.WrapError(semantics.InvalidArgument, op, err)
	}
	if _, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (
		key         text PRIMARY KEY,
		token       text,
		lease_until timestamptz,
		done_at     timestamptz)`); err != nil {
		return nil, wrap(op, err)
	}
	return &Store{
		db: db, table: table,
		claimSQL: `INSERT INTO ` + table + ` AS t (key, token, lease_until)
			VALUES ($1, $2, clock_timestamp() + $3 * interval '1 microsecond')
			ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, lease_until = EXCLUDED.lease_until
			WHERE t.done_at IS NULL AND t.lease_until < clock_timestamp()
			RETURNING token`,
		stateSQL: `SELECT done_at IS NOT NULL FROM ` + table + ` WHERE key = $1`,
		completeSQL: `INSERT INTO ` + table + ` AS t (key, done_at) VALUES ($1, clock_timestamp())
			ON CONFLICT (key) DO UPDATE SET done_at = clock_timestamp(), token = NULL, lease_until = NULL`,
		releaseSQL: `DELETE FROM ` + table + ` WHERE key = $1 AND token = $2 AND done_at IS NULL`,
		purgeSQL:   `DELETE FROM ` + table + ` WHERE done_at < clock_timestamp() - $1 * interval '1 microsecond'`,
	}, nil
}

// Claim takes key for lease: it inserts the row, or takes over a row whose
// lease expired, with a new random token that it returns.
func (s *Store) Claim(ctx context.Context, key string, lease time.Duration) (broker.ClaimResult, string, error) {
	const op = "pgstore: claim"
	token := newToken()
	for range 3 { // a row released between the two statements: look again
		var got string
		err := s.db.QueryRow(ctx, s.claimSQL, key, token, lease.Microseconds()).Scan(&got)
		if err == nil {
			return broker.Claimed, token, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, "", wrap(op, err)
		}
		var done bool
		err = s.db.QueryRow(ctx, s.stateSQL, key).Scan(&done)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			continue
		case err != nil:
			return 0, "", wrap(op, err)
		case done:
			return broker.AlreadyDone, "", nil
		default:
			return broker.InFlight, "", nil
		}
	}
	return broker.InFlight, "", nil
}

// Complete marks key done, even when the claim token was taken over since
// (see broker.IdempotencyStore).
func (s *Store) Complete(ctx context.Context, key, _ string) error {
	if _, err := s.db.Exec(ctx, s.completeSQL, key); err != nil {
		return wrap("pgstore: complete", err)
	}
	return nil
}

// Release deletes the row of key while it holds the claim token and is not
// done.
func (s *Store) Release(ctx context.Context, key, token string) error {
	if token == "" {
		return nil // no claim: nothing to release
	}
	if _, err := s.db.Exec(ctx, s.releaseSQL, key, token); err != nil {
		return wrap("pgstore: release", err)
	}
	return nil
}

// Purge deletes the records of keys done more than olderThan ago and returns
// how many. A redelivery of a purged key is handled again.
func (s *Store) Purge(ctx context.Context, olderThan time.Duration) (int64, error) {
	tag, err := s.db.Exec(ctx, s.purgeSQL, olderThan.Microseconds())
	if err != nil {
		return 0, wrap("pgstore: purge", err)
	}
	return tag.RowsAffected(), nil
}

// ident quotes a possibly schema-qualified table name.
func ident(name, def string) (string, error) {
	if name == "" {
		name = def
	}
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return "", fmt.Errorf("table name %q has more than a schema and a name", name)
	}
	for _, p := range parts {
		if p == "" {
			return "", fmt.Errorf("table name %q has an empty part", name)
		}
	}
	return pgx.Identifier(parts).Sanitize(), nil
}

// wrap gives database errors a kind: connection trouble is transient.
func wrap(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", "40", "53", "57": // connection, rollback (serialization, deadlock), resources, operator intervention
			return broker.WrapError(semantics.Transient, op, err)
		case "42", "22", "23": // syntax/undefined object, data, integrity
			return broker.WrapError(semantics.Permanent, op, err)
		}
		return broker.WrapError(semantics.Unknown, op, err)
	}
	return broker.WrapError(semantics.Transient, op, err) // network errors, timeouts
}

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
