package pgstore

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// InboxOptions tune an Inbox.
type InboxOptions struct {
	// Table records processed keys, optionally schema-qualified; default
	// "queuekit_inbox".
	Table string
	// Key returns a message's key; default its ID. A message with an empty
	// key is handled in a transaction without being recorded.
	Key func(*broker.Message) string
	// InFlightDelay is the redelivery delay of a copy that arrives while
	// another copy is being handled; default 1s.
	InFlightDelay time.Duration
	// StoreErrorDelay is the redelivery delay of a message whose inbox
	// statements failed (the database is down or unreachable): the error
	// carries it (see broker.RetryAfter). It doubles with each consecutive
	// failure of a Handler, up to MaxStoreErrorDelay, and starts again once
	// the database answers. Default 100ms.
	StoreErrorDelay time.Duration
	// MaxStoreErrorDelay caps StoreErrorDelay's growth; default 5s.
	MaxStoreErrorDelay time.Duration
	// OnDuplicate observes each message skipped as already processed.
	OnDuplicate func(*broker.Message)
}

// Inbox is the transactional inbox. It is safe for concurrent use.
type Inbox struct {
	db                   DB
	o                    InboxOptions
	table                string
	lockSQL, insertSQL   string
	purgeSQL, processSQL string
}

// TxHandler handles a message inside tx. Its writes commit together with
// the inbox record, or not at all.
type TxHandler func(ctx context.Context, tx pgx.Tx, msg *broker.Message) error

// NewInbox returns an Inbox over db, creating its table if it does not
// exist.
func NewInbox(ctx context.Context, db DB, opts InboxOptions) (*Inbox, error) {
	const op = "pgstore: new inbox"
	if db == nil {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "db is nil")
	}
	if opts.InFlightDelay < 0 || opts.StoreErrorDelay < 0 || opts.MaxStoreErrorDelay < 0 {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "InFlightDelay %v, StoreErrorDelay %v and MaxStoreErrorDelay %v must be >= 0",
			opts.InFlightDelay, opts.StoreErrorDelay, opts.MaxStoreErrorDelay)
	}
	if opts.InFlightDelay == 0 {
		opts.InFlightDelay = time.Second
	}
	if opts.StoreErrorDelay == 0 {
		opts.StoreErrorDelay = 100 * time.Millisecond
	}
	if opts.MaxStoreErrorDelay == 0 {
		opts.MaxStoreErrorDelay = 5 * time.Second
	}
	opts.MaxStoreErrorDelay = max(opts.MaxStoreErrorDelay, opts.StoreErrorDelay)
	if opts.Key == nil {
		opts.Key = func(m *broker.Message) string { return m.ID }
	}
	table, err := ident(opts.Table, "queuekit_inbox")
	if err != nil {
		return nil, broker.WrapError(semantics.InvalidArgument, op, err)
	}
	if _, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (
		key          text PRIMARY KEY,
		processed_at timestamptz NOT NULL DEFAULT clock_timestamp())`); err != nil {
		return nil, wrap(op, err)
	}
	return &Inbox{
		db: db, o: opts, table: table,
		// One lock space per table, so that two inboxes never wait on each other.
		lockSQL:    `SELECT pg_try_advisory_xact_lock(hashtextextended($1, hashtextextended($2, 0)))`,
		insertSQL:  `INSERT INTO ` + table + ` (key) VALUES ($1) ON CONFLICT (key) DO NOTHING`,
		purgeSQL:   `DELETE FROM ` + table + ` WHERE processed_at < clock_timestamp() - $1 * interval '1 microsecond'`,
		processSQL: `SELECT EXISTS (SELECT 1 FROM ` + table + ` WHERE key = $1)`,
	}, nil
}

// Handler returns a broker.Handler that runs fn in a transaction which also
// records the message's key, and commits both at once:
//
//   - a key already recorded: the message is a duplicate, acked unhandled;
//   - another copy being handled right now (its transaction holds the key's
//     advisory lock): broker.ErrInFlight with InFlightDelay, so it comes
//     back later and finds the key recorded;
//   - fn fails, or the process dies before the commit: the transaction
//     rolls back, nothing is recorded, and the redelivery is handled.
//
// A commit whose outcome is unknown (the connection dropped during COMMIT)
// is safe too: the redelivery finds the key recorded if it committed. While
// the database fails, messages come back after a growing delay (see
// InboxOptions.StoreErrorDelay).
func (in *Inbox) Handler(fn TxHandler) broker.Handler {
	return &inboxHandler{in: in, fn: fn, backoff: backoff{base: in.o.StoreErrorDelay, limit: in.o.MaxStoreErrorDelay}}
}

type inboxHandler struct {
	in      *Inbox
	fn      TxHandler
	backoff backoff
}

// Stage names this handler for middleware.Check: it plays dedupe's part.
func (h *inboxHandler) Stage() string { return "dedupe" }

func (h *inboxHandler) Handle(ctx context.Context, m *broker.Message) (err error) {
	const op = "pgstore: inbox"
	in := h.in
	tx, err := in.db.Begin(ctx)
	if err != nil {
		return h.backoff.retry(wrap(op, err))
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	key := in.o.Key(m)
	if key != "" {
		var locked bool
		if err := tx.QueryRow(ctx, in.lockSQL, key, in.table).Scan(&locked); err != nil {
			return h.backoff.retry(wrap(op, err))
		}
		if !locked {
			h.backoff.reset()
			return broker.RetryAfter(broker.ErrInFlight, in.o.InFlightDelay)
		}
		tag, err := tx.Exec(ctx, in.insertSQL, key)
		if err != nil {
			return h.backoff.retry(wrap(op, err))
		}
		h.backoff.reset()
		if tag.RowsAffected() == 0 {
			if in.o.OnDuplicate != nil {
				in.o.OnDuplicate(m)
			}
			return tx.Rollback(ctx) // nothing to keep; a rollback error is harmless but reported
		}
	}
	if err := h.fn(ctx, tx, m); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return h.backoff.retry(wrap(op+": commit", err))
	}
	h.backoff.reset()
	return nil
}

// backoff turns consecutive database failures into growing redelivery
// delays, as broker.Idempotent does for its store.
type backoff struct {
	base, limit time.Duration
	fails       atomic.Int64
}

// retry counts a failure and returns err with its redelivery delay: base
// doubled once per earlier consecutive failure, at most limit.
func (b *backoff) retry(err error) error {
	d := b.base
	for n := b.fails.Add(1) - 1; n > 0 && d < b.limit; n-- {
		d *= 2
	}
	return broker.RetryAfter(err, min(d, b.limit))
}

// reset ends a run of failures: the database answered.
func (b *backoff) reset() {
	if b.fails.Load() != 0 {
		b.fails.Store(0)
	}
}

// Processed reports whether key was recorded as processed.
func (in *Inbox) Processed(ctx context.Context, key string) (bool, error) {
	var ok bool
	if err := in.db.QueryRow(ctx, in.processSQL, key).Scan(&ok); err != nil {
		return false, wrap("pgstore: inbox processed", err)
	}
	return ok, nil
}

// Purge deletes the records of keys processed more than olderThan ago and
// returns how many. A redelivery of a purged key is handled again.
func (in *Inbox) Purge(ctx context.Context, olderThan time.Duration) (int64, error) {
	tag, err := in.db.Exec(ctx, in.purgeSQL, olderThan.Microseconds())
	if err != nil {
		return 0, wrap("pgstore: inbox purge", err)
	}
	return tag.RowsAffected(), nil
}
