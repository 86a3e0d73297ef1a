package kafka

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// SQLDialect is the database an OffsetStore lives in.
type SQLDialect int

const (
	// PostgreSQL 10 or later, through a database/sql driver with $n
	// placeholders such as github.com/jackc/pgx/v5/stdlib. The default.
	PostgreSQL SQLDialect = iota
	// MySQL is MariaDB 10.6 or later or MySQL 8.0 or later, through
	// github.com/go-sql-driver/mysql. Its offsets table limits group
	// names to 255 characters.
	MySQL
)

// String returns "postgresql" or "mysql".
func (d SQLDialect) String() string {
	switch d {
	case PostgreSQL:
		return "postgresql"
	case MySQL:
		return "mysql"
	}
	return fmt.Sprintf("SQLDialect(%d)", int(d))
}

// DefaultOffsetsTable is the table of an OffsetStore that names none.
const DefaultOffsetsTable = "queuekit_offsets"

// DefaultTxBatch is ConsumeTxOptions.MaxBatch's default.
const DefaultTxBatch = 100

// ErrFenced is the cause of the error ConsumeTx returns when a batch could
// not commit because another consumer claimed one of its partitions since
// this one did (this member was removed from the group, and the partition
// was assigned elsewhere), or the partition's stored offset had moved past
// the batch. Nothing of the batch was committed. errors.Is finds it.
var ErrFenced = errors.New("the partition was claimed by another consumer of the group")

// OffsetStore is the table in which ConsumeTx keeps a consumer group's
// offsets: one row per group, topic and partition, with the offset of the
// next record to consume and the claim (epoch) of the member that owns the
// partition. Create it with Migrate, or with the statements of Schema in
// your own migrations.
type OffsetStore struct {
	// DB is the application's database: the handler's transactions are
	// opened on it. Required.
	DB *sql.DB
	// Dialect of DB; default PostgreSQL.
	Dialect SQLDialect
	// Table, optionally qualified by a schema or database ("app.offsets");
	// default DefaultOffsetsTable.
	Table string
}

// identRE is what a table name may be: an identifier, optionally qualified.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// check validates s without any I/O and returns it with its defaults.
func (s OffsetStore) check(op string) (OffsetStore, error) {
	if s.DB == nil {
		return s, errf(semantics.InvalidArgument, op, "OffsetStore.DB is required")
	}
	return s.checkSchema(op)
}

// checkSchema is check without DB, which Schema does not need.
func (s OffsetStore) checkSchema(op string) (OffsetStore, error) {
	if s.Dialect != PostgreSQL && s.Dialect != MySQL {
		return s, errf(semantics.InvalidArgument, op, "unknown OffsetStore.Dialect %d: use PostgreSQL or MySQL", int(s.Dialect))
	}
	if s.Table == "" {
		s.Table = DefaultOffsetsTable
	}
	if !identRE.MatchString(s.Table) || len(s.Table) > 60 {
		return s, errf(semantics.InvalidArgument, op, "OffsetStore.Table %.70q is not a table name: letters, digits and '_', optionally schema.table, at most 60 characters", s.Table)
	}
	return s, nil
}

// Schema returns the statements that create the offsets table when it does
// not exist yet (the package documentation shows them).
func (s OffsetStore) Schema() ([]string, error) {
	s, err := s.checkSchema("kafka: offsets schema")
	if err != nil {
		return nil, err
	}
	if s.Dialect == MySQL {
		return []string{`CREATE TABLE IF NOT EXISTS ` + s.Table + ` (
	group_id    VARCHAR(255) NOT NULL,
	topic       VARCHAR(249) NOT NULL,
	part        INT          NOT NULL,
	next_offset BIGINT       NOT NULL,
	epoch       BIGINT       NOT NULL,
	claimed_by  VARCHAR(255) NOT NULL,
	updated_at  DATETIME(6)  NOT NULL,
	PRIMARY KEY (group_id, topic, part)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`}, nil
	}
	return []string{`CREATE TABLE IF NOT EXISTS ` + s.Table + ` (
	group_id    text        NOT NULL,
	topic       text        NOT NULL,
	part        integer     NOT NULL,
	next_offset bigint      NOT NULL,
	epoch       bigint      NOT NULL,
	claimed_by  text        NOT NULL,
	updated_at  timestamptz NOT NULL,
	PRIMARY KEY (group_id, topic, part)
)`}, nil
}

// Migrate creates the offsets table unless it exists.
func (s OffsetStore) Migrate(ctx context.Context) error {
	const op = "kafka: migrate offsets"
	s, err := s.check(op)
	if err != nil {
		return err
	}
	stmts, _ := s.Schema()
	for _, q := range stmts {
		if _, err := s.DB.ExecContext(ctx, q); err != nil {
			return dbErr(op, err)
		}
	}
	return nil
}

// Offsets returns the stored offset of the next record to consume of each
// partition of topic that group consumed through ConsumeTx; -1 for a
// partition claimed but not consumed yet. Partitions never claimed are
// absent.
func (s OffsetStore) Offsets(ctx context.Context, topic, group string) (map[int32]int64, error) {
	const op = "kafka: stored offsets"
	s, err := s.check(op)
	if err != nil {
		return nil, err
	}
	q := offsetQueries(s)
	rows, err := s.DB.QueryContext(ctx, q.listSQL, group, topic)
	if err != nil {
		return nil, dbErr(op, err)
	}
	defer rows.Close()
	out := map[int32]int64{}
	for rows.Next() {
		var p int32
		var next int64
		if err := rows.Scan(&p, &next); err != nil {
			return nil, dbErr(op, err)
		}
		out[p] = next
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr(op, err)
	}
	return out, nil
}

// dbErr wraps a database error: a context's end keeps its own kind, any
// other database failure is Transient (the next attempt may find the
// database back), never showing the DSN (database/sql errors do not).
func dbErr(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return wrap(op, err)
	}
	return errf(semantics.Transient, op, "database: %w", err)
}

// queries are the statements of one OffsetStore, in its dialect.
type queries struct {
	claimSQL, readSQL, advanceSQL, listSQL string
}

func offsetQueries(s OffsetStore) queries {
	t := s.Table
	if s.Dialect == MySQL {
		return queries{
			claimSQL: `INSERT INTO ` + t + ` (group_id, topic, part, next_offset, epoch, claimed_by, updated_at)
	VALUES (?, ?, ?, -1, 1, ?, UTC_TIMESTAMP(6))
	ON DUPLICATE KEY UPDATE epoch = epoch + 1, claimed_by = ?, updated_at = UTC_TIMESTAMP(6)`,
			readSQL: `SELECT next_offset, epoch FROM ` + t + ` WHERE group_id = ? AND topic = ? AND part = ?`,
			advanceSQL: `UPDATE ` + t + ` SET next_offset = ?, updated_at = UTC_TIMESTAMP(6)
	WHERE group_id = ? AND topic = ? AND part = ? AND epoch = ? AND next_offset <= ?`,
			listSQL: `SELECT part, next_offset FROM ` + t + ` WHERE group_id = ? AND topic = ? ORDER BY part`,
		}
	}
	return queries{
		claimSQL: `INSERT INTO ` + t + ` AS o (group_id, topic, part, next_offset, epoch, claimed_by, updated_at)
	VALUES ($1, $2, $3, -1, 1, $4, clock_timestamp())
	ON CONFLICT (group_id, topic, part) DO UPDATE SET epoch = o.epoch + 1, claimed_by = $5, updated_at = clock_timestamp()`,
		readSQL: `SELECT next_offset, epoch FROM ` + t + ` WHERE group_id = $1 AND topic = $2 AND part = $3`,
		advanceSQL: `UPDATE ` + t + ` SET next_offset = $1, updated_at = clock_timestamp()
	WHERE group_id = $2 AND topic = $3 AND part = $4 AND epoch = $5 AND next_offset <= $6`,
		listSQL: `SELECT part, next_offset FROM ` + t + ` WHERE group_id = $1 AND topic = $2 ORDER BY part`,
	}
}

// claim is a member's ownership of a partition in the offsets table: the
// epoch its claim set, and the offset of the next record to consume (-1:
// none stored yet).
type claim struct {
	epoch, next int64
}

// claimPartition takes partition part of topic for group in the offsets
// table: it bumps the row's epoch (creating the row if needed), which
// fences the previous owner's later commits, and returns the stored offset.
// If the previous owner's transaction holds the row, it waits for that
// transaction to end, so it reads the offset that transaction committed.
func (q queries) claimPartition(ctx context.Context, db *sql.DB, topic, group string, part int32, owner string) (claim, error) {
	const op = "kafka: claim partition"
	var c claim
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return c, dbErr(op, err)
	}
	defer func() { _ = tx.Rollback() }()
	args := []any{group, topic, part, owner, owner}
	if _, err := tx.ExecContext(ctx, q.claimSQL, args...); err != nil {
		return c, dbErr(op, fmt.Errorf("partition %d of %s, group %s: %w", part, topic, group, err))
	}
	if err := tx.QueryRowContext(ctx, q.readSQL, group, topic, part).Scan(&c.next, &c.epoch); err != nil {
		return c, dbErr(op, fmt.Errorf("partition %d of %s, group %s: %w", part, topic, group, err))
	}
	if err := tx.Commit(); err != nil {
		return c, dbErr(op, err)
	}
	return c, nil
}

// advance moves the stored offset of a claimed partition to next inside
// tx, provided the claim still holds (no one claimed the partition since)
// and the stored offset is not past first, the batch's first record. It
// takes the row's lock until tx ends.
func (q queries) advance(ctx context.Context, tx *sql.Tx, topic, group string, part int32, c claim, first, next int64) error {
	const op = "kafka: consume tx"
	res, err := tx.ExecContext(ctx, q.advanceSQL, next, group, topic, part, c.epoch, first)
	if err != nil {
		return dbErr(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return dbErr(op, err)
	}
	if n != 1 {
		return errf(semantics.Transient, op, "partition %d of %s, group %s: claim %d no longer holds, or the stored offset is past %d: %w; nothing of the batch was committed",
			part, topic, group, c.epoch, first, ErrFenced)
	}
	return nil
}

// TxHandler handles one message inside tx, the transaction in which
// ConsumeTx also records the message's offset. It must not commit or roll
// back tx. Its error rolls the transaction back and ends ConsumeTx.
type TxHandler func(ctx context.Context, tx *sql.Tx, m *broker.Message) error

// ConsumeTxOptions configure ConsumeTx. Topic, Group and Store.DB are
// required.
type ConsumeTxOptions struct {
	// Topic to consume.
	Topic string
	// Group that consumes it. Use the group with ConsumeTx only: a
	// Subscriber of the same group would commit offsets to Kafka that
	// ConsumeTx ignores.
	Group string
	// Store is where the offsets are kept: the handler's database.
	Store OffsetStore
	// MaxBatch bounds the records handled in one transaction; default
	// DefaultTxBatch (100). 1 gives every record its own transaction.
	MaxBatch int
	// TxOptions of the transactions (isolation level); nil: the
	// database's default.
	TxOptions *sql.TxOptions
	// ClientOptions are applied after the Broker's (for example
	// kgo.RebalanceTimeout, which bounds how long a batch may take, or
	// kgo.OnPartitionsAssigned). They cannot replace what the guarantee
	// rests on: the group and topic, BlockRebalanceOnPoll,
	// AdjustFetchOffsetsFn, OnPartitionsRevoked and OnPartitionsLost.
	ClientOptions []kgo.Opt
}

// ConsumeTx consumes opts.Topic as a member of opts.Group with the offsets
// kept in the application's database (opts.Store) instead of Kafka: each
// batch of records is handled by h inside one database transaction, which
// also moves the stored offsets past the batch, so the handler's writes and
// the record's consumption commit together or not at all. When the group
// assigns it partitions, the member claims them in the offsets table and
// starts from the stored offsets. The effect of every record therefore
// lands in the database exactly once, across crashes, restarts and
// rebalances, without a dedupe table (see "Offsets in your database" in the
// package documentation for the guarantee, its conditions and the schema).
//
// ConsumeTx runs until ctx is done, then lets the batch in progress finish
// and commit (the handler's context ends the Broker's DrainTimeout later;
// a batch that fails then is rolled back), leaves the group and returns
// nil. It returns an error when h fails (the batch is rolled back;
// the error names the record), when the database fails, or when the member
// was fenced (ErrFenced); it leaves the group first, and nothing is lost:
// call it again to carry on from the stored offsets. A message h cannot
// handle would fail again: record it in tx (a dead-letter table) and
// return nil to move past it.
func (b *Broker) ConsumeTx(ctx context.Context, opts ConsumeTxOptions, h TxHandler) (err error) {
	const op = "kafka: consume tx"
	c, err := b.newTxConsumer(op, opts, h)
	if err != nil {
		return err
	}
	if err := b.ensureTopics(ctx, opts.Topic); err != nil {
		return wrap(op, err)
	}
	// Declaring the group keeps queuekit's no-group rule: publishers see
	// the group (and, through the offsets mirrored to Kafka, its lag).
	if err := b.declareGroup(ctx, opts.Topic, opts.Group); err != nil {
		return wrap(op, err)
	}
	b.grouped.Store(opts.Topic, struct{}{})

	kopts := append(append([]kgo.Opt(nil), b.seedOpts...), b.consumerDefaults()...)
	kopts = append(append(kopts, b.opts.ClientOptions...), opts.ClientOptions...)
	kopts = append(kopts, // last: what the guarantee rests on cannot be replaced
		kgo.ConsumerGroup(opts.Group),
		kgo.ConsumeTopics(opts.Topic),
		kgo.BlockRebalanceOnPoll(),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(b.opts.CommitInterval),
		kgo.AdjustFetchOffsetsFn(c.adjust),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
	)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return errf(semantics.InvalidArgument, op, "%w", err)
	}
	defer func() {
		cl.AllowRebalance() // Close leaves the group, which waits for the rebalance gate
		cl.Close()
	}()
	// The handler's context ends DrainTimeout after ctx does, so that the
	// batch in progress when ctx ends can finish and commit.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	stopDrain := context.AfterFunc(ctx, func() { time.AfterFunc(b.opts.DrainTimeout, hcancel) })
	defer stopDrain()
	return c.run(ctx, hctx, cl)
}

// txConsumer is one ConsumeTx call.
type txConsumer struct {
	opts  ConsumeTxOptions
	q     queries
	h     TxHandler
	owner string

	mu     sync.Mutex
	claims map[int32]claim
}

func (b *Broker) newTxConsumer(op string, opts ConsumeTxOptions, h TxHandler) (*txConsumer, error) {
	if b.closed.Load() {
		return nil, broker.ErrClosed
	}
	if h == nil {
		return nil, errf(semantics.InvalidArgument, op, "TxHandler is required")
	}
	if err := checkTopic(op, opts.Topic); err != nil {
		return nil, err
	}
	if err := checkGroup(op, opts.Group); err != nil {
		return nil, err
	}
	store, err := opts.Store.check(op)
	if err != nil {
		return nil, err
	}
	opts.Store = store
	if store.Dialect == MySQL && len([]rune(opts.Group)) > 255 {
		return nil, errf(semantics.InvalidArgument, op, "group %.40q... is longer than the 255 characters the MySQL offsets table holds", opts.Group)
	}
	switch {
	case opts.MaxBatch < 0:
		return nil, errf(semantics.InvalidArgument, op, "ConsumeTxOptions.MaxBatch is %d, must be >= 0", opts.MaxBatch)
	case opts.MaxBatch == 0:
		opts.MaxBatch = DefaultTxBatch
	}
	return &txConsumer{opts: opts, q: offsetQueries(store), h: h, owner: ownerName(), claims: map[int32]claim{}}, nil
}

// ownerName identifies this process in the claimed_by column: host, pid
// and a random suffix.
func ownerName() string {
	host, _ := os.Hostname()
	var r [4]byte
	_, _ = rand.Read(r[:])
	name := fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(r[:]))
	if len(name) > 255 {
		name = name[len(name)-255:]
	}
	return name
}

// adjust runs when the group assigns partitions, before they are fetched:
// it claims each in the offsets table and starts it at the stored offset.
// A partition with no stored offset starts where the group's Kafka commit
// (or, without one, the Broker's StartOffset) says.
func (c *txConsumer) adjust(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	parts := offsets[c.opts.Topic]
	sorted := make([]int32, 0, len(parts))
	for p := range parts {
		sorted = append(sorted, p)
	}
	slices.Sort(sorted)
	for _, p := range sorted {
		cl, err := c.q.claimPartition(ctx, c.opts.Store.DB, c.opts.Topic, c.opts.Group, p, c.owner)
		if err != nil {
			return nil, err // kgo leaves the session and polls return it: run ends with it
		}
		c.mu.Lock()
		c.claims[p] = cl
		c.mu.Unlock()
		if cl.next >= 0 {
			parts[p] = kgo.NewOffset().At(cl.next).WithEpoch(-1)
		}
	}
	return offsets, nil
}

// onRevoked forgets the claims of revoked partitions (the rebalance gate
// guarantees no batch is in progress) and commits the offsets marked so far
// to Kafka, the lag-reporting mirror of the database's.
func (c *txConsumer) onRevoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	c.forget(revoked)
	_ = cl.CommitMarkedOffsets(ctx)
}

// onLost forgets the claims of partitions already gone.
func (c *txConsumer) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	c.forget(lost)
}

func (c *txConsumer) forget(which map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range which[c.opts.Topic] {
		delete(c.claims, p)
	}
}

// run polls and handles batches until ctx is done or something fails.
func (c *txConsumer) run(ctx, hctx context.Context, cl *kgo.Client) error {
	const op = "kafka: consume tx"
	for {
		fs := cl.PollRecords(ctx, c.opts.MaxBatch)
		if ctx.Err() != nil {
			return nil
		}
		if fs.IsClientClosed() {
			return broker.ErrClosed
		}
		var fetchErr error
		fs.EachError(func(_ string, _ int32, err error) {
			var gs *kgo.ErrGroupSession
			claimFailed := errors.As(err, &gs) && driver.KindOf(gs.Err) != semantics.Unknown // adjust's error
			if fetchErr == nil && (claimFailed || kindOf(err) != semantics.Transient) {
				fetchErr = err
			}
		})
		if fetchErr != nil {
			return wrap(op, fetchErr)
		}
		if err := c.batch(ctx, hctx, cl, fs.Records()); err != nil {
			return err
		}
		cl.AllowRebalance()
	}
}

// span is the part of a batch from one partition.
type span struct {
	part        int32
	claim       claim
	first, last int64
}

// batch handles recs in one transaction: it moves the stored offset of
// each partition in the batch first (which fences a member that lost the
// partition, and holds the rows until the commit), then runs the handler
// over the records in order, then commits. Records of partitions this
// member holds no claim on are skipped (their partition was revoked or
// lost); a record before the stored offset is an error, never skipped.
func (c *txConsumer) batch(ctx, hctx context.Context, cl *kgo.Client, recs []*kgo.Record) error {
	const op = "kafka: consume tx"
	if len(recs) == 0 {
		return nil
	}
	spans := map[int32]*span{}
	kept := recs[:0:0]
	c.mu.Lock()
	for _, r := range recs {
		if r.Topic != c.opts.Topic {
			continue
		}
		s := spans[r.Partition]
		if s == nil {
			cl, ok := c.claims[r.Partition]
			if !ok {
				continue
			}
			s = &span{part: r.Partition, claim: cl, first: -1}
			spans[r.Partition] = s
		}
		if r.Offset < s.claim.next || s.first >= 0 && r.Offset <= s.last {
			c.mu.Unlock()
			return errf(semantics.Permanent, op, "partition %d of %s gave record %d, below the offset %d stored for group %s (or a record twice): "+
				"the topic was recreated or its log truncated; set the partition's next_offset in %s to where the group should resume",
				r.Partition, r.Topic, r.Offset, max(s.claim.next, s.last+1), c.opts.Group, c.opts.Store.Table)
		}
		if s.first < 0 {
			s.first = r.Offset
		}
		s.last = r.Offset
		kept = append(kept, r)
	}
	c.mu.Unlock()
	if len(kept) == 0 {
		return nil
	}
	order := make([]*span, 0, len(spans))
	for _, s := range spans {
		if s.first >= 0 {
			order = append(order, s)
		}
	}
	slices.SortFunc(order, func(a, b *span) int { return int(a.part) - int(b.part) }) // one lock order for every member

	dbctx := context.WithoutCancel(ctx) // a batch whose handler finished commits even when ctx ended meanwhile
	tx, err := c.opts.Store.DB.BeginTx(dbctx, c.opts.TxOptions)
	if err != nil {
		return dbErr(op, err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = tx.Rollback()
		}
	}()
	for _, s := range order {
		if err := c.q.advance(dbctx, tx, c.opts.Topic, c.opts.Group, s.part, s.claim, s.first, s.last+1); err != nil {
			if errors.Is(err, ErrFenced) {
				c.forget(map[string][]int32{c.opts.Topic: {s.part}})
			}
			return err
		}
	}
	for _, r := range kept {
		m := new(broker.Message)
		decodeRecord(r, m, false)
		if err := c.h(hctx, tx, m); err != nil {
			if ctx.Err() != nil && hctx.Err() != nil {
				return nil // stopping, and the batch ran out of time: it is rolled back and consumed again later
			}
			return wrap(op, fmt.Errorf("record %d of partition %d of %s (message %s): %w; its batch was rolled back", r.Offset, r.Partition, r.Topic, m.ID, err))
		}
	}
	if err := tx.Commit(); err != nil {
		return dbErr(op, fmt.Errorf("commit (outcome unknown if the connection dropped: the stored offsets say): %w", err))
	}
	committed = true

	c.mu.Lock()
	for _, s := range order {
		if cur, ok := c.claims[s.part]; ok && cur.epoch == s.claim.epoch {
			c.claims[s.part] = claim{epoch: cur.epoch, next: s.last + 1}
		}
	}
	c.mu.Unlock()
	cl.MarkCommitRecords(kept...) // Kafka's commits follow, never lead, the database's
	return nil
}
