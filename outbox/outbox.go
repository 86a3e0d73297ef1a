package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Defaults of Options.
const (
	// DefaultTable is the messages table; the shards and relays tables
	// are named after it, with the suffixes _shards and _relays.
	DefaultTable = "queuekit_outbox"
	// DefaultShards is how many shards Migrate creates.
	DefaultShards = 16
)

// Options configure an Outbox. The zero value is usable.
type Options struct {
	// Table names the messages table, optionally schema-qualified
	// ("app.outbox"); default DefaultTable. The shards and relays tables
	// are Table+"_shards" and Table+"_relays".
	Table string
	// Shards is how many shards Migrate creates; default DefaultShards.
	// A message's shard is a hash of its key (of its ID when it has no
	// key) modulo the number of shards in the database, which Add reads
	// once. Shards bound how many relay workers publish at once; more
	// shards than workers is fine. Migrate only ever adds shards; adding
	// some while keys have unsent messages may reorder those keys once.
	Shards int
	// MaxMessageSize, when > 0, makes Add refuse a larger message
	// (broker.Message.Size) with a broker.TooLargeError, inside the
	// caller's transaction, rather than have the relay fail to publish it
	// later and hold its shard. Set it to the broker's limit.
	MaxMessageSize int
}

// Outbox writes messages in the application's transactions and reads them
// for relays and Stats. It is safe for concurrent use.
type Outbox struct {
	db     *sql.DB
	d      Dialect
	opts   Options
	tables Tables

	insertRow string // one row's VALUES tuple

	mu     sync.Mutex
	shards int // number of shards in the database, read once by Add
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// New returns an Outbox over db in dialect d. It does not touch the
// database: create the tables with Migrate, or with the statements of
// Schema in your own migrations.
func New(db *sql.DB, d Dialect, opts Options) (*Outbox, error) {
	const op = "outbox: new"
	switch {
	case db == nil:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "db is nil")
	case d == nil:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "dialect is nil (outbox.Postgres or outbox.MySQL)")
	case opts.Shards < 0:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "Shards is %d, must be >= 0", opts.Shards)
	case opts.MaxMessageSize < 0:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "MaxMessageSize is %d, must be >= 0", opts.MaxMessageSize)
	}
	if opts.Table == "" {
		opts.Table = DefaultTable
	}
	if !identRE.MatchString(opts.Table) || len(opts.Table) > 50 {
		return nil, broker.Errorf(semantics.InvalidArgument, op,
			"Table %q is not a plain name (letters, digits, _; optionally schema.table; at most 50 bytes)", opts.Table)
	}
	if opts.Shards == 0 {
		opts.Shards = DefaultShards
	}
	o := &Outbox{db: db, d: d, opts: opts, tables: Tables{
		Messages: opts.Table,
		Shards:   opts.Table + "_shards",
		Relays:   opts.Table + "_relays",
	}}
	o.insertRow = "(?, ?, ?, ?, ?, ?, " + d.Now() + ", " + d.NowPlus() + ")"
	return o, nil
}

// Tables returns the names of the outbox's tables.
func (o *Outbox) Tables() Tables { return o.tables }

// Dialect returns the outbox's dialect.
func (o *Outbox) Dialect() Dialect { return o.d }

// Schema returns the statements Migrate runs to create the tables and
// indexes (each one "IF NOT EXISTS"), for migration tools of your own.
// After them, the shards table needs one row per shard, 0 to Shards-1,
// which Migrate inserts (the package documentation shows the statement).
func (o *Outbox) Schema() []string { return o.d.Schema(o.tables) }

// Migrate creates the outbox's tables and indexes where they do not exist
// and inserts the missing shard rows, up to Options.Shards. It is safe to
// run at every start and from several processes; it never drops or alters
// anything. Run it (or the statements of Schema) before the first Add.
func (o *Outbox) Migrate(ctx context.Context) error {
	const op = "outbox: migrate"
	for _, s := range o.Schema() {
		if _, err := o.db.ExecContext(ctx, s); err != nil {
			return broker.WrapError(semantics.Transient, op, err)
		}
	}
	if err := o.ensureShards(ctx, o.opts.Shards); err != nil {
		return broker.WrapError(semantics.Transient, op, err)
	}
	return nil
}

// ensureShards inserts the shard rows 0..n-1 that are missing.
func (o *Outbox) ensureShards(ctx context.Context, n int) error {
	q := o.d.Rebind(o.d.Upsert(o.tables.Shards,
		[]string{"shard", "served_at", "last_error"}, []string{"?", o.d.Now(), "''"}, "shard", ""))
	for i := range n {
		if _, err := o.db.ExecContext(ctx, q, i); err != nil {
			return err
		}
	}
	return nil
}

// ErrNotMigrated is the cause of the error Add and Relay.Run return when the
// outbox's tables or shard rows are missing: run Migrate first.
var ErrNotMigrated = errors.New("the outbox's tables are missing or have no shards: run Outbox.Migrate (or the statements of Outbox.Schema) first")

// missingTables explains err, the failure of a query on the outbox's
// tables: ErrNotMigrated when the database answers, else err.
func (o *Outbox) missingTables(ctx context.Context, err error) error {
	if perr := o.db.PingContext(ctx); perr != nil {
		return err
	}
	return fmt.Errorf("%w (%v)", ErrNotMigrated, err)
}

// shardCount returns the number of shards in the database, read once.
func (o *Outbox) shardCount(ctx context.Context) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.shards > 0 {
		return o.shards, nil
	}
	var n int
	if err := o.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+o.tables.Shards).Scan(&n); err != nil {
		return 0, o.missingTables(ctx, err)
	}
	if n == 0 {
		return 0, ErrNotMigrated
	}
	o.shards = n
	return n, nil
}

// Shard returns the shard of a message with key key and ID id among n
// shards: FNV-1a of the key, or of the ID when the key is empty, modulo n.
func Shard(key, id string, n int) int {
	h := fnv.New32a()
	if key != "" {
		h.Write([]byte(key))
	} else {
		h.Write([]byte(id))
	}
	return int(h.Sum32() % uint32(n))
}

// Add writes msgs for topic in tx, the application's own transaction: they
// are published if and only if tx commits. Add gives a message without an
// ID a random one (broker.NewID), on the caller's Message, so the ID is
// known before the commit and stays the same across every republication.
// ID, Key, Payload and Headers are kept, and DeliverAt: a message whose
// DeliverAt is in the future is held until then, as AddAt holds it. The
// rest of a Message is not kept.
//
// The relay publishes each key's messages in the order they were added:
// those of one transaction in argument order, and those of transactions
// that commit one after the other in commit order. Between two
// transactions that add to one key at the same time the order is not
// defined: lock the entity's own row first when it matters.
//
// Bad input (nil tx, empty topic, nil message, text that is not UTF-8, a
// message over MaxMessageSize) is refused with an InvalidArgument error
// before anything is written.
func (o *Outbox) Add(ctx context.Context, tx *sql.Tx, topic string, msgs ...*broker.Message) error {
	return o.add(ctx, tx, time.Time{}, topic, msgs)
}

// AddAt is Add for messages that must not be published before at: the
// relay holds them until then (scheduled delivery through the outbox, on
// any broker, whether or not it claims ScheduledDelivery). It is the same
// as setting each message's DeliverAt to at, except that a message whose
// own DeliverAt is later keeps it: neither time is ever early, and the
// caller's messages are not changed. Add honours DeliverAt alone.
//
// A time (at or DeliverAt) is taken relative to this process's clock when
// AddAt runs: the delay until it, rounded up to the microsecond, is added
// to the database's clock, so a clock difference between the two does not
// make a message early. A time in the past is the same as none.
//
// The relay publishes a held message once it is due, without DeliverAt,
// so the broker delivers it at once. A held message does not hold back its
// key: the key's later messages that are due are published before it.
func (o *Outbox) AddAt(ctx context.Context, tx *sql.Tx, at time.Time, topic string, msgs ...*broker.Message) error {
	return o.add(ctx, tx, at, topic, msgs)
}

// maxRowsPerInsert bounds one INSERT statement (7 placeholders a row).
const maxRowsPerInsert = 100

// add writes msgs, each held until the later of at and its DeliverAt (zero
// times: none).
func (o *Outbox) add(ctx context.Context, tx *sql.Tx, at time.Time, topic string, msgs []*broker.Message) error {
	const op = "outbox: add"
	switch {
	case tx == nil:
		return broker.Errorf(semantics.InvalidArgument, op, "tx is nil: Add writes in the application's transaction")
	case topic == "":
		return broker.Errorf(semantics.InvalidArgument, op, "topic is empty")
	case !utf8.ValidString(topic):
		return broker.Errorf(semantics.InvalidArgument, op, "topic is not valid UTF-8")
	}
	for i, m := range msgs {
		if err := o.check(op, i, m); err != nil {
			return err
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	n, err := o.shardCount(ctx)
	if err != nil {
		return broker.WrapError(semantics.Transient, op, err)
	}
	now := time.Now()
	for start := 0; start < len(msgs); start += maxRowsPerInsert {
		chunk := msgs[start:min(start+maxRowsPerInsert, len(msgs))]
		var q strings.Builder
		q.WriteString("INSERT INTO " + o.tables.Messages + " (shard, topic, msg_id, msg_key, payload, headers, created_at, deliver_at) VALUES ")
		args := make([]any, 0, 7*len(chunk))
		for i, m := range chunk {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString(o.insertRow)
			var headers any // NULL without headers
			if len(m.Headers) > 0 {
				b, err := json.Marshal(m.Headers)
				if err != nil {
					return broker.WrapError(semantics.InvalidArgument, op, err)
				}
				headers = string(b)
			}
			payload := m.Payload
			if payload == nil {
				payload = []byte{}
			}
			args = append(args, Shard(m.Key, m.ID, n), topic, m.ID, []byte(m.Key), payload, headers, holdMicros(now, at, m.DeliverAt))
		}
		if _, err := tx.ExecContext(ctx, o.d.Rebind(q.String()), args...); err != nil {
			return broker.WrapError(semantics.Transient, op, err)
		}
	}
	return nil
}

// holdMicros is how long a message added at now is held, in microseconds
// rounded up: until the later of at and deliverAt, 0 when both are past or
// zero.
func holdMicros(now, at, deliverAt time.Time) int64 {
	due := at
	if deliverAt.After(due) {
		due = deliverAt
	}
	if due.IsZero() {
		return 0
	}
	d := due.Sub(now)
	if d <= 0 {
		return 0
	}
	return int64((d + time.Microsecond - 1) / time.Microsecond)
}

// check refuses what could not be stored losslessly or published later.
func (o *Outbox) check(op string, i int, m *broker.Message) error {
	if m == nil {
		return broker.Errorf(semantics.InvalidArgument, op, "message %d is nil", i)
	}
	if m.ID == "" {
		m.ID = broker.NewID()
	}
	if !utf8.ValidString(m.ID) {
		return broker.Errorf(semantics.InvalidArgument, op, "message %d: ID is not valid UTF-8", i)
	}
	for k, v := range m.Headers {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return broker.Errorf(semantics.InvalidArgument, op, "message %d: header %q is not valid UTF-8", i, k)
		}
	}
	if max := o.opts.MaxMessageSize; max > 0 {
		if n := m.Size(); n > max {
			return &broker.Error{Kind: semantics.InvalidArgument, Op: op, Err: &broker.TooLargeError{ID: m.ID, Size: n, Max: max}}
		}
	}
	return nil
}

// Stats describe the outbox at one moment; see Outbox.Stats.
type Stats struct {
	// Depth is the number of unsent messages, due or held.
	Depth int64
	// Held is how many of them wait for their time (AddAt, DeliverAt).
	Held int64
	// OldestAge is how long the longest-waiting due message has waited:
	// since it was added, or since its time (AddAt, DeliverAt). 0 when
	// none is due.
	OldestAge time.Duration
	// Sent is the number of sent messages kept until cleanup
	// (RelayOptions.Retention).
	Sent int64
	// Shards is the state of each shard.
	Shards []ShardStats
	// Relays are the relays seen: running, or stopped without a clean
	// exit and not yet forgotten (RelayOptions.ForgetRelaysAfter).
	Relays []RelayStats
}

// ShardStats is the state of one shard.
type ShardStats struct {
	Shard int
	// Relay served the shard last ("" if none has yet).
	Relay string
	// ServedAgo is how long ago a relay last published a batch of it (or
	// tried to).
	ServedAgo time.Duration
	// Failures counts the failed publishes since the last success; the
	// shard is held until RetryIn has passed.
	Failures int
	RetryIn  time.Duration
	// LastError is the last failed publish's error, "" after a success.
	LastError string
}

// RelayStats is one relay seen in the relays table.
type RelayStats struct {
	// ID is RelayOptions.ID.
	ID string
	// Up is how long ago the relay started.
	Up time.Duration
	// SeenAgo is how long ago its last heartbeat was.
	SeenAgo time.Duration
}

// Stats counts the unsent and kept messages and reads the shards and
// relays tables. Its cost grows with the number of unsent messages (it
// counts them), so call it at a metrics-scrape pace, not per message.
func (o *Outbox) Stats(ctx context.Context) (Stats, error) {
	const op = "outbox: stats"
	var s Stats
	d, t := o.d, o.tables
	var oldest int64
	q := "SELECT COUNT(*), COALESCE(SUM(CASE WHEN deliver_at > " + d.Now() + " THEN 1 ELSE 0 END), 0), " +
		"COALESCE(MAX(CASE WHEN deliver_at <= " + d.Now() + " THEN " + d.MicrosSince("deliver_at") + " END), 0) " +
		"FROM " + t.Messages + " WHERE sent_at IS NULL"
	if err := o.db.QueryRowContext(ctx, q).Scan(&s.Depth, &s.Held, &oldest); err != nil {
		return s, o.statsErr(op, err)
	}
	s.OldestAge = time.Duration(max(oldest, 0)) * time.Microsecond
	if err := o.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+t.Messages+" WHERE sent_at IS NOT NULL").Scan(&s.Sent); err != nil {
		return s, o.statsErr(op, err)
	}
	rows, err := o.db.QueryContext(ctx, "SELECT shard, relay, "+d.MicrosSince("served_at")+", failures, "+
		"COALESCE(-"+d.MicrosSince("retry_at")+", 0), last_error FROM "+t.Shards+" ORDER BY shard")
	if err != nil {
		return s, o.statsErr(op, err)
	}
	for rows.Next() {
		var sh ShardStats
		var served, retry int64
		if err := rows.Scan(&sh.Shard, &sh.Relay, &served, &sh.Failures, &retry, &sh.LastError); err != nil {
			rows.Close()
			return s, o.statsErr(op, err)
		}
		sh.ServedAgo = time.Duration(served) * time.Microsecond
		sh.RetryIn = time.Duration(max(retry, 0)) * time.Microsecond
		s.Shards = append(s.Shards, sh)
	}
	if err := rows.Err(); err != nil {
		return s, o.statsErr(op, err)
	}
	rows, err = o.db.QueryContext(ctx, "SELECT relay, "+d.MicrosSince("started_at")+", "+d.MicrosSince("seen_at")+
		" FROM "+t.Relays+" ORDER BY relay")
	if err != nil {
		return s, o.statsErr(op, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r RelayStats
		var up, seen int64
		if err := rows.Scan(&r.ID, &up, &seen); err != nil {
			return s, o.statsErr(op, err)
		}
		r.Up, r.SeenAgo = time.Duration(up)*time.Microsecond, time.Duration(seen)*time.Microsecond
		s.Relays = append(s.Relays, r)
	}
	return s, o.statsErr(op, rows.Err())
}

func (o *Outbox) statsErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return broker.WrapError(semantics.Transient, op, err)
}

// inList returns "(?, ?, ...)" with n placeholders.
func inList(n int) string {
	return "(" + strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ")"
}
