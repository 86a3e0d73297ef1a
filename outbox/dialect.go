package outbox

import (
	"strconv"
	"strings"
)

// Dialect is the SQL that differs between databases: placeholders, the
// clock, upserts, a bounded delete and the schema. Everything else the
// outbox runs is the same text on every database, including the relay's
// SELECT ... FOR UPDATE SKIP LOCKED. Postgres and MySQL are the two
// dialects; implement Dialect for another database with SKIP LOCKED.
//
// Statements are written with ? placeholders and passed through Rebind.
type Dialect interface {
	// Name is a short name for messages: "postgres", "mysql".
	Name() string
	// Rebind rewrites a statement's ? placeholders into the driver's form.
	Rebind(query string) string
	// Now is an expression for the current time, to the microsecond, read
	// when the statement runs (not when its transaction began).
	Now() string
	// NowPlus is an expression for Now plus a number of microseconds given
	// by one ? placeholder (an int64, possibly negative).
	NowPlus() string
	// MicrosSince is an expression for the whole microseconds from the
	// time expression ts to Now, as an integer.
	MicrosSince(ts string) string
	// Upsert is an INSERT of one row of values (SQL expressions) into
	// cols, which on a conflict on the key column sets set (an assignment
	// list such as "seen_at = ..."), or does nothing when set is empty.
	Upsert(table string, cols, values []string, key, set string) string
	// DeleteSentBefore deletes at most ? rows (second placeholder) of
	// table whose sent_at is before NowPlus (first placeholder).
	DeleteSentBefore(table string) string
	// Schema returns the statements that create the outbox's tables and
	// indexes when they do not exist yet.
	Schema(t Tables) []string
}

// Tables are the names of the outbox's three tables, optionally qualified
// by a schema (PostgreSQL) or database (MySQL).
type Tables struct {
	// Messages holds one row per message, unsent then sent.
	Messages string
	// Shards holds one row per shard: which relay served it last, and its
	// backoff after a failed publish. A relay locks a shard's row while it
	// publishes that shard's messages.
	Shards string
	// Relays holds one row per running relay, refreshed by its heartbeat.
	Relays string
}

// Postgres is the dialect of PostgreSQL (10 or later; tested on 15), for
// database/sql drivers with $n placeholders such as
// github.com/jackc/pgx/v5/stdlib.
var Postgres Dialect = postgres{}

// MySQL is the dialect of MariaDB (10.6 or later; tested on 10.11) and
// MySQL (8.0 or later), for github.com/go-sql-driver/mysql. No DSN option
// is needed: the outbox never reads or writes a time value through the
// driver (it computes times in SQL, in UTC), so parseTime and loc do not
// matter. interpolateParams=true saves Add two round trips (the driver
// otherwise prepares and closes a statement per call); the relay prepares
// its statements once.
var MySQL Dialect = mysqlDialect{}

type postgres struct{}

func (postgres) Name() string { return "postgres" }

func (postgres) Rebind(q string) string {
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

func (postgres) Now() string { return "clock_timestamp()" }

func (postgres) NowPlus() string {
	return "(clock_timestamp() + CAST(? AS bigint) * interval '1 microsecond')"
}

func (postgres) MicrosSince(ts string) string {
	return "CAST(EXTRACT(EPOCH FROM (clock_timestamp() - " + ts + ")) * 1000000 AS bigint)"
}

func (postgres) Upsert(table string, cols, values []string, key, set string) string {
	q := "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ") VALUES (" + strings.Join(values, ", ") + ") ON CONFLICT (" + key + ") DO "
	if set == "" {
		return q + "NOTHING"
	}
	return q + "UPDATE SET " + set
}

func (postgres) DeleteSentBefore(table string) string {
	return "DELETE FROM " + table + " WHERE seq IN (SELECT seq FROM " + table +
		" WHERE sent_at < " + Postgres.NowPlus() + " LIMIT ?)"
}

func (postgres) Schema(t Tables) []string {
	n := bareName(t.Messages)
	return []string{
		`CREATE TABLE IF NOT EXISTS ` + t.Messages + ` (
	seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	shard      integer     NOT NULL,
	topic      text        NOT NULL,
	msg_id     text        NOT NULL,
	msg_key    bytea       NOT NULL,
	payload    bytea       NOT NULL,
	headers    text,
	created_at timestamptz NOT NULL,
	deliver_at timestamptz NOT NULL,
	sent_at    timestamptz
)`,
		`CREATE INDEX IF NOT EXISTS ` + n + `_unsent ON ` + t.Messages + ` (shard, seq) WHERE sent_at IS NULL`,
		`CREATE INDEX IF NOT EXISTS ` + n + `_sent ON ` + t.Messages + ` (sent_at) WHERE sent_at IS NOT NULL`,
		`CREATE TABLE IF NOT EXISTS ` + t.Shards + ` (
	shard      integer     PRIMARY KEY,
	relay      text        NOT NULL DEFAULT '',
	served_at  timestamptz NOT NULL,
	failures   integer     NOT NULL DEFAULT 0,
	retry_at   timestamptz,
	last_error text        NOT NULL DEFAULT ''
)`,
		`CREATE TABLE IF NOT EXISTS ` + t.Relays + ` (
	relay      text        PRIMARY KEY,
	started_at timestamptz NOT NULL,
	seen_at    timestamptz NOT NULL
)`,
	}
}

type mysqlDialect struct{}

func (mysqlDialect) Name() string           { return "mysql" }
func (mysqlDialect) Rebind(q string) string { return q }
func (mysqlDialect) Now() string            { return "UTC_TIMESTAMP(6)" }
func (mysqlDialect) NowPlus() string        { return "(UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)" }

func (mysqlDialect) MicrosSince(ts string) string {
	return "TIMESTAMPDIFF(MICROSECOND, " + ts + ", UTC_TIMESTAMP(6))"
}

func (mysqlDialect) Upsert(table string, cols, values []string, key, set string) string {
	if set == "" {
		set = key + " = " + key
	}
	return "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ") VALUES (" + strings.Join(values, ", ") + ") ON DUPLICATE KEY UPDATE " + set
}

func (mysqlDialect) DeleteSentBefore(table string) string {
	return "DELETE FROM " + table + " WHERE sent_at < " + MySQL.NowPlus() + " ORDER BY sent_at LIMIT ?"
}

func (mysqlDialect) Schema(t Tables) []string {
	n := bareName(t.Messages)
	const opts = ` ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`
	return []string{
		`CREATE TABLE IF NOT EXISTS ` + t.Messages + ` (
	seq        BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
	shard      INT         NOT NULL,
	topic      TEXT        NOT NULL,
	msg_id     TEXT        NOT NULL,
	msg_key    MEDIUMBLOB  NOT NULL,
	payload    LONGBLOB    NOT NULL,
	headers    LONGTEXT,
	created_at DATETIME(6) NOT NULL,
	deliver_at DATETIME(6) NOT NULL,
	sent_at    DATETIME(6),
	KEY ` + n + `_unsent (shard, sent_at, seq),
	KEY ` + n + `_sent (sent_at)
)` + opts,
		`CREATE TABLE IF NOT EXISTS ` + t.Shards + ` (
	shard      INT          NOT NULL PRIMARY KEY,
	relay      VARCHAR(255) NOT NULL DEFAULT '',
	served_at  DATETIME(6)  NOT NULL,
	failures   INT          NOT NULL DEFAULT 0,
	retry_at   DATETIME(6),
	last_error TEXT         NOT NULL
)` + opts,
		`CREATE TABLE IF NOT EXISTS ` + t.Relays + ` (
	relay      VARCHAR(255) NOT NULL PRIMARY KEY,
	started_at DATETIME(6)  NOT NULL,
	seen_at    DATETIME(6)  NOT NULL
)` + opts,
	}
}

// bareName is a table name without its schema, for naming indexes.
func bareName(table string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		return table[i+1:]
	}
	return table
}
