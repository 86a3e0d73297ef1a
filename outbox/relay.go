package outbox

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Publisher is what a relay publishes with: a *broker.Publisher, or anything
// with its Publish. Publish must return nil only once the broker durably
// accepted every message, and on a partial failure a *broker.PublishError
// naming the failed ones (queuekit's adapters do both).
type Publisher interface {
	Publish(ctx context.Context, topic string, msgs ...*broker.Message) error
}

// DeleteWhenSent is the RelayOptions.Retention that deletes a message in the
// transaction that records it as published, instead of keeping it.
const DeleteWhenSent time.Duration = -1

// Defaults of RelayOptions.
const (
	DefaultWorkers           = 4
	DefaultBatchSize         = 100
	DefaultPollInterval      = 50 * time.Millisecond
	DefaultMinBackoff        = 100 * time.Millisecond
	DefaultMaxBackoff        = 30 * time.Second
	DefaultTimeout           = 30 * time.Second
	DefaultRetention         = time.Hour
	DefaultCleanupInterval   = time.Minute
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultForgetRelaysAfter = time.Hour
)

// pipelineDepth is how many batches a relay works on per publishing
// worker: while Workers batches are being published, as many more are being
// read (lock, fetch) or recorded (mark, commit), each in its own transaction
// on its own shard, so the broker is not left idle while the database works.
const pipelineDepth = 2

// cleanupChunk bounds the rows one cleanup statement deletes.
const cleanupChunk = 10000

// RelayOptions configure a Relay. The zero value is usable.
type RelayOptions struct {
	// ID names the relay in the shards and relays tables and in `queuekit
	// outbox status`; default host-pid-random. Two running relays must not
	// share an ID.
	ID string
	// Workers bounds what the relay publishes at once: at most Workers ×
	// BatchSize messages are being published — Workers full batches, or
	// more, smaller ones, since the bound counts messages. The relay runs
	// 2 × Workers workers, so that while some publish, the others read
	// their next batch or record their last one, each in its own
	// transaction on its own shard, and the broker does not wait for the
	// database: a relay locks up to 2 × Workers shards and uses up to
	// 2 × Workers database connections (and, for a moment, those of its
	// heartbeat and cleanup). Default DefaultWorkers.
	Workers int
	// BatchSize is the most messages one shard's batch holds, 1 to 1000;
	// default DefaultBatchSize.
	BatchSize int
	// PollInterval is how often an idle relay looks for messages (one
	// query; one worker polls while the others wait for it to find work);
	// default DefaultPollInterval. It bounds the latency the outbox adds
	// when idle, and how late a held message or a shard in backoff is
	// picked up.
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff of a shard
	// whose publish failed (doubling per failure, ±20% jitter), and of a
	// worker whose database calls fail; defaults DefaultMinBackoff and
	// DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds the publishing of one batch, and again its reading
	// and recording; default DefaultTimeout. A batch whose publish times
	// out is published again later (duplicates, never loss).
	Timeout time.Duration
	// Retention is how long sent messages are kept before cleanup deletes
	// them; default DefaultRetention. DeleteWhenSent deletes them at once.
	Retention time.Duration
	// CleanupInterval is how often the relay deletes the messages sent
	// more than Retention ago (in chunks of 10,000 rows, until none is
	// left) and forgets relays not seen for ForgetRelaysAfter; default
	// DefaultCleanupInterval. Every relay cleans; that is harmless.
	CleanupInterval time.Duration
	// HeartbeatInterval is how often the relay refreshes its row in the
	// relays table; default DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// ForgetRelaysAfter is how long a relay that stopped without a clean
	// exit stays in the relays table; default DefaultForgetRelaysAfter.
	ForgetRelaysAfter time.Duration
	// OnError observes every failed publish and database error the relay
	// retries. Default: a warning through log/slog.
	OnError func(err error)
}

// Relay publishes an outbox's messages. See the package documentation for
// what it guarantees.
type Relay struct {
	o    *Outbox
	pub  Publisher
	opts RelayOptions

	running   atomic.Bool
	inFlight  budget // messages being published: Workers × BatchSize
	heldMu    sync.Mutex
	held      map[int]bool  // shards this relay's workers have locked, or are locking
	pollToken chan struct{} // held by the one idle worker that polls
	wakeMu    sync.Mutex
	wakeCh    chan struct{}        // closed when a worker finds a shard
	stmts     map[string]*sql.Stmt // prepared by Run, read-only while it runs

	candidatesSQL, lockSQL, fetchSQL string
	markSQL                          string // + IN list
	markOKSQL                        string // markSQL and okSQL in one statement, or ""
	markOKSeqsFirst                  bool   // markOKSQL's arguments: the IN list, then okSQL's (else relay, IN list, shard)
	okSQL, failSQL                   string
	heartbeatSQL, goneSQL            string
	cleanSQL, forgetSQL              string
}

// NewRelay returns a relay that publishes o's messages with pub. Run it
// in as many processes as you like: each shard is published by one relay
// at a time.
func NewRelay(o *Outbox, pub Publisher, opts RelayOptions) (*Relay, error) {
	const op = "outbox: new relay"
	if o == nil || pub == nil {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "outbox and publisher are required")
	}
	if opts.Workers < 0 || opts.BatchSize < 0 || opts.BatchSize > 1000 || opts.PollInterval < 0 || opts.MinBackoff < 0 ||
		opts.MaxBackoff < 0 || opts.Timeout < 0 || opts.Retention < DeleteWhenSent || opts.CleanupInterval < 0 ||
		opts.HeartbeatInterval < 0 || opts.ForgetRelaysAfter < 0 {
		return nil, broker.Errorf(semantics.InvalidArgument, op,
			"options out of range: durations and counts must be >= 0 (Retention may be DeleteWhenSent), BatchSize <= 1000")
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if opts.ID == "" {
		opts.ID = defaultRelayID()
	}
	if len(opts.ID) > 200 {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "ID is %d bytes, at most 200", len(opts.ID))
	}
	if opts.Workers == 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = DefaultBatchSize
	}
	def(&opts.PollInterval, DefaultPollInterval)
	def(&opts.MinBackoff, DefaultMinBackoff)
	def(&opts.MaxBackoff, DefaultMaxBackoff)
	def(&opts.Timeout, DefaultTimeout)
	def(&opts.Retention, DefaultRetention)
	def(&opts.CleanupInterval, DefaultCleanupInterval)
	def(&opts.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&opts.ForgetRelaysAfter, DefaultForgetRelaysAfter)
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.OnError == nil {
		opts.OnError = func(err error) { slog.Warn("outbox relay", "err", err) }
	}

	d, t := o.d, o.tables
	r := &Relay{o: o, pub: pub, opts: opts, inFlight: budget{free: opts.Workers * opts.BatchSize},
		held:      make(map[int]bool),
		pollToken: make(chan struct{}, 1), wakeCh: make(chan struct{})}
	r.candidatesSQL = d.Rebind("SELECT s.shard FROM " + t.Shards + " s WHERE (s.retry_at IS NULL OR s.retry_at <= " + d.Now() + ")" +
		// A scalar subquery with LIMIT 1, not EXISTS: MariaDB turns EXISTS
		// into a semi-join that scans every message; this probes the
		// unsent index once per shard.
		" AND (SELECT 1 FROM " + t.Messages + " m WHERE m.shard = s.shard AND m.sent_at IS NULL AND m.deliver_at <= " + d.Now() + " LIMIT 1) IS NOT NULL" +
		" ORDER BY s.served_at")
	r.lockSQL = d.Rebind("SELECT failures FROM " + t.Shards + " WHERE shard = ? AND (retry_at IS NULL OR retry_at <= " + d.Now() + ")" +
		" FOR UPDATE SKIP LOCKED")
	r.fetchSQL = d.Rebind("SELECT seq, topic, msg_id, msg_key, payload, headers FROM " + t.Messages +
		" WHERE shard = ? AND sent_at IS NULL AND deliver_at <= " + d.Now() + " ORDER BY seq LIMIT ?")
	// One statement for every batch: BatchSize placeholders, the unused
	// ones repeating the last sequence number.
	mark := "UPDATE " + t.Messages + " SET sent_at = " + d.Now() + " WHERE seq IN " + inList(opts.BatchSize)
	if opts.Retention == DeleteWhenSent {
		mark = "DELETE FROM " + t.Messages + " WHERE seq IN " + inList(opts.BatchSize)
	}
	r.markSQL = d.Rebind(mark)
	r.okSQL = d.Rebind("UPDATE " + t.Shards + " SET relay = ?, served_at = " + d.Now() +
		", failures = 0, retry_at = NULL, last_error = '' WHERE shard = ?")
	// The common end of a batch, every message published, in one
	// statement instead of two where the database allows it: a round trip
	// fewer per batch.
	switch d.(type) {
	case postgres: // a data-modifying WITH runs whether or not it is read
		r.markOKSQL = d.Rebind("WITH m AS (" + mark + ") UPDATE " + t.Shards +
			" SET relay = ?, served_at = " + d.Now() + ", failures = 0, retry_at = NULL, last_error = '' WHERE shard = ?")
		r.markOKSeqsFirst = true
	case mysqlDialect: // a multi-table UPDATE; there is no multi-table DELETE that also updates
		if opts.Retention != DeleteWhenSent {
			r.markOKSQL = "UPDATE " + t.Messages + " m, " + t.Shards + " s SET m.sent_at = " + d.Now() +
				", s.relay = ?, s.served_at = " + d.Now() + ", s.failures = 0, s.retry_at = NULL, s.last_error = ''" +
				" WHERE m.seq IN " + inList(opts.BatchSize) + " AND s.shard = ?"
		}
	}
	r.failSQL = d.Rebind("UPDATE " + t.Shards + " SET relay = ?, served_at = " + d.Now() +
		", failures = failures + 1, retry_at = " + d.NowPlus() + ", last_error = ? WHERE shard = ?")
	r.heartbeatSQL = d.Rebind(d.Upsert(t.Relays, []string{"relay", "started_at", "seen_at"},
		[]string{"?", d.Now(), d.Now()}, "relay", "seen_at = "+d.Now()))
	r.goneSQL = d.Rebind("DELETE FROM " + t.Relays + " WHERE relay = ?")
	r.cleanSQL = d.Rebind(d.DeleteSentBefore(t.Messages))
	r.forgetSQL = d.Rebind("DELETE FROM " + t.Relays + " WHERE " + d.MicrosSince("seen_at") + " > ?")
	return r, nil
}

// ID returns the relay's ID.
func (r *Relay) ID() string { return r.opts.ID }

func defaultRelayID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Run publishes until ctx ends, then lets the batches in flight finish
// (each bounded by twice Timeout), removes the relay from the relays table and
// returns nil. It returns an error at once when the outbox's tables are
// missing (ErrNotMigrated) or the database cannot be reached; after that it
// retries every failure with backoff, reporting it to OnError. A Relay runs
// once at a time.
func (r *Relay) Run(ctx context.Context) error {
	const op = "outbox: relay"
	if !r.running.CompareAndSwap(false, true) {
		return broker.Errorf(semantics.InvalidArgument, op, "relay %s is already running", r.opts.ID)
	}
	defer r.running.Store(false)
	var n int
	if err := r.o.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+r.o.tables.Shards).Scan(&n); err != nil {
		return broker.WrapError(semantics.Transient, op, r.o.missingTables(ctx, err))
	}
	if n == 0 {
		return broker.WrapError(semantics.InvalidArgument, op, ErrNotMigrated)
	}
	if _, err := r.o.db.ExecContext(ctx, "SELECT 1 FROM "+r.o.tables.Messages+" WHERE 1 = 0"); err != nil {
		return broker.WrapError(semantics.Transient, op, r.o.missingTables(ctx, err))
	}
	if err := r.prepare(ctx); err != nil {
		return broker.WrapError(semantics.Transient, op, err)
	}
	defer r.closeStmts()
	if err := r.heartbeat(ctx); err != nil {
		return broker.WrapError(semantics.Transient, op, err)
	}
	var wg sync.WaitGroup
	for range pipelineDepth * r.opts.Workers {
		wg.Go(func() { r.work(ctx) })
	}
	wg.Go(func() { r.every(ctx, r.opts.HeartbeatInterval, false, r.heartbeat) })
	wg.Go(func() { r.every(ctx, r.opts.CleanupInterval, true, r.cleanup) })
	wg.Wait()
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := r.o.db.ExecContext(gctx, r.goneSQL, r.opts.ID); err != nil {
		r.opts.OnError(broker.WrapError(semantics.Transient, op, err))
	}
	return nil
}

// work publishes one shard's batch after another until ctx ends. When
// there is nothing to publish, one idle worker at a time polls (every
// PollInterval) while the others wait for it, or for any worker, to find a
// shard with work: the idle load on the database is one query per
// PollInterval, whatever the number of workers.
func (r *Relay) work(ctx context.Context) {
	failures := 0
	var cands []int // shards to try next, from one candidates query
	// The worker keeps one connection while it finds work, rather than
	// take one from the pool per batch: with database/sql's default of two
	// idle connections, the pool would close and reopen most of them (a
	// new session, and the statements prepared again on it).
	var conn *sql.Conn
	release := func() {
		if conn != nil {
			_ = conn.Close() // back to the pool
			conn = nil
		}
	}
	defer release()
	for ctx.Err() == nil {
		worked, err := r.batch(ctx, &conn, &cands)
		if err != nil {
			release()
			r.opts.OnError(broker.WrapError(semantics.Transient, "outbox: relay", err))
			failures++
			sleep(ctx, r.backoff(failures))
			continue
		}
		failures = 0
		if worked {
			continue
		}
		// Idle: keep the connection for a wake-up within PollInterval (a
		// moment with every candidate shard held by other workers), give
		// it back when idle for longer.
		t := time.NewTimer(r.opts.PollInterval)
		if !r.idle(ctx, release, t.C) {
			release()
			r.idle(ctx, release, nil)
		}
		t.Stop()
	}
}

// idle waits for work: it polls when no other worker does, else waits
// for a worker to find a shard, until ctx ends. It returns false when
// timeout fired first.
func (r *Relay) idle(ctx context.Context, release func(), timeout <-chan time.Time) bool {
	select {
	case r.pollToken <- struct{}{}: // the idle poller
		release()
		sleep(ctx, r.opts.PollInterval)
		<-r.pollToken
	case <-r.woken():
	case <-ctx.Done():
	case <-timeout:
		return false
	}
	return true
}

// onConn runs f on the worker's connection, taking one from the pool when
// it has none, and again once when the one it kept turned out broken.
func (r *Relay) onConn(ctx context.Context, conn **sql.Conn, f func(c *sql.Conn) error) error {
	for attempt := 0; ; attempt++ {
		if *conn == nil {
			c, err := r.o.db.Conn(ctx)
			if err != nil {
				return err
			}
			*conn = c
		}
		err := f(*conn)
		if err == nil || attempt > 0 || !errors.Is(err, driver.ErrBadConn) {
			return err
		}
		_ = (*conn).Close()
		*conn = nil
	}
}

// begin starts a READ COMMITTED transaction on the worker's connection.
func (r *Relay) begin(ctx context.Context, conn **sql.Conn) (tx *sql.Tx, err error) {
	err = r.onConn(ctx, conn, func(c *sql.Conn) error {
		tx, err = c.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
		return err
	})
	return tx, err
}

// woken returns a channel closed the next time a worker finds a shard.
func (r *Relay) woken() <-chan struct{} {
	r.wakeMu.Lock()
	defer r.wakeMu.Unlock()
	return r.wakeCh
}

// wake tells the waiting workers that a shard had work: there may be more.
func (r *Relay) wake() {
	r.wakeMu.Lock()
	close(r.wakeCh)
	r.wakeCh = make(chan struct{})
	r.wakeMu.Unlock()
}

// every runs f now (when now is set) and then every interval until ctx ends.
func (r *Relay) every(ctx context.Context, interval time.Duration, now bool, f func(context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if now {
			if err := f(ctx); err != nil && ctx.Err() == nil {
				r.opts.OnError(broker.WrapError(semantics.Transient, "outbox: relay", err))
			}
		}
		now = true
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// prepare prepares the statements the relay runs over and over: prepared
// once per connection, they cost one round trip each time instead of
// three with drivers that do not cache (go-sql-driver/mysql).
func (r *Relay) prepare(ctx context.Context) error {
	r.stmts = make(map[string]*sql.Stmt)
	for _, q := range []string{r.lockSQL, r.fetchSQL, r.markSQL, r.markOKSQL, r.okSQL, r.failSQL,
		r.heartbeatSQL, r.cleanSQL, r.forgetSQL} {
		if q == "" {
			continue
		}
		s, err := r.o.db.PrepareContext(ctx, q)
		if err != nil {
			r.closeStmts()
			return err
		}
		r.stmts[q] = s
	}
	return nil
}

func (r *Relay) closeStmts() {
	for _, s := range r.stmts {
		_ = s.Close()
	}
	r.stmts = nil
}

// stmt returns the prepared statement of q for tx.
func (r *Relay) stmt(ctx context.Context, tx *sql.Tx, q string) *sql.Stmt {
	return tx.StmtContext(ctx, r.stmts[q])
}

func (r *Relay) heartbeat(ctx context.Context) error {
	_, err := r.stmts[r.heartbeatSQL].ExecContext(ctx, r.opts.ID)
	return err
}

// cleanup deletes the messages sent more than Retention ago, in chunks,
// and forgets the relays not seen for ForgetRelaysAfter. It runs in READ
// COMMITTED transactions, so that on MySQL it takes no gap locks that
// would make the application's inserts wait.
func (r *Relay) cleanup(ctx context.Context) error {
	if r.opts.Retention != DeleteWhenSent {
		for ctx.Err() == nil {
			n, err := r.execRC(ctx, r.cleanSQL, -r.opts.Retention.Microseconds(), cleanupChunk)
			if err != nil {
				return err
			}
			if n < cleanupChunk {
				break
			}
		}
	}
	_, err := r.execRC(ctx, r.forgetSQL, r.opts.ForgetRelaysAfter.Microseconds())
	return err
}

func (r *Relay) execRC(ctx context.Context, q string, args ...any) (int64, error) {
	tx, err := r.o.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback() }()
	res, err := r.stmt(ctx, tx, q).ExecContext(ctx, args...)
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	return n, tx.Commit()
}

// row is one unsent message.
type row struct {
	seq   int64
	topic string
	msg   *broker.Message
}

// batch publishes up to BatchSize due messages of one shard that no other
// relay holds, in sequence order, and records the result, all in one
// transaction that holds the shard's row lock. It takes the shard from
// cands, the worker's list of shards to try, which it refills with one
// candidates query when empty (one query serves several batches; a stale
// entry costs a lock attempt or an empty read, never a wrong publish). It
// reports whether it found a shard to work on; its error is a database
// error (a failed publish is recorded on the shard, reported to OnError,
// and is not an error here).
func (r *Relay) batch(ctx context.Context, conn **sql.Conn, cands *[]int) (worked bool, err error) {
	// The batch finishes even when ctx ends: abandoning it after a publish
	// would only make duplicates.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*r.opts.Timeout)
	defer cancel()
	if len(*cands) == 0 {
		err := r.onConn(bctx, conn, func(c *sql.Conn) (err error) {
			*cands, err = r.candidates(bctx, c)
			return err
		})
		if err != nil || len(*cands) == 0 {
			return false, err
		}
	}
	// Shards another worker of this relay holds are skipped without a
	// query; when only those are left, without a transaction either.
	r.heldMu.Lock()
	for len(*cands) > 0 && r.held[(*cands)[0]] {
		*cands = (*cands)[1:]
	}
	r.heldMu.Unlock()
	if len(*cands) == 0 {
		return false, nil
	}
	tx, err := r.begin(bctx, conn)
	if err != nil {
		return false, err
	}
	shard, failures, ok, err := r.lockShard(bctx, tx, cands)
	if err != nil || !ok {
		_ = tx.Rollback()
		return false, err
	}
	defer func() {
		_ = tx.Rollback() // a no-op after Commit
		r.unhold(shard)
	}()
	r.wake()
	rows, err := r.fetch(bctx, tx, shard)
	if err != nil {
		return false, err
	}
	if len(rows) == r.opts.BatchSize { // probably more: again after the others
		*cands = append(*cands, shard)
	}
	if len(rows) == 0 { // another relay published them between our two looks
		return true, tx.Commit()
	}
	pctx, pcancel := context.WithTimeout(bctx, r.opts.Timeout)
	accepted, pubErr := r.publish(pctx, rows)
	pcancel()
	seqs := func() []any {
		args := make([]any, r.opts.BatchSize, r.opts.BatchSize+2)
		for i := range args {
			args[i] = accepted[min(i, len(accepted)-1)]
		}
		return args
	}
	switch {
	case pubErr == nil && r.markOKSQL != "": // len(accepted) > 0: rows is not empty
		var args []any
		if r.markOKSeqsFirst {
			args = append(seqs(), r.opts.ID, shard)
		} else {
			args = append(append([]any{r.opts.ID}, seqs()...), shard)
		}
		_, err = r.stmt(bctx, tx, r.markOKSQL).ExecContext(bctx, args...)
	case len(accepted) > 0:
		if _, err := r.stmt(bctx, tx, r.markSQL).ExecContext(bctx, seqs()...); err != nil {
			return false, err
		}
	}
	if err != nil {
		return false, err
	}
	if pubErr == nil && r.markOKSQL == "" {
		_, err = r.stmt(bctx, tx, r.okSQL).ExecContext(bctx, r.opts.ID, shard)
	} else if pubErr != nil {
		wait := r.backoff(failures + 1)
		_, err = r.stmt(bctx, tx, r.failSQL).ExecContext(bctx, r.opts.ID, wait.Microseconds(), errorText(pubErr), shard)
	}
	if err != nil {
		return false, err
	}
	if err := tx.Commit(); err != nil {
		return false, err
	}
	if pubErr != nil {
		r.opts.OnError(fmt.Errorf("outbox: relay: shard %d: %d of %d messages published, the rest held (failure %d): %w",
			shard, len(accepted), len(rows), failures+1, pubErr))
	}
	return true, nil
}

// candidates returns the shards that have due messages and are not in
// backoff, least recently served first. It locks nothing (one query, outside
// any transaction: all an idle relay runs).
func (r *Relay) candidates(ctx context.Context, c *sql.Conn) ([]int, error) {
	rs, err := c.QueryContext(ctx, r.candidatesSQL) // no arguments: one round trip, unprepared
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var cands []int
	for rs.Next() {
		var s int
		if err := rs.Scan(&s); err != nil {
			return nil, err
		}
		cands = append(cands, s)
	}
	return cands, rs.Err()
}

// lockShard locks the row of the first shard of cands that is still not in
// backoff and not locked by another relay, by its key, so that on MySQL no
// other row is locked. It removes the shards it tried from cands.
func (r *Relay) lockShard(ctx context.Context, tx *sql.Tx, cands *[]int) (shard, failures int, ok bool, err error) {
	lock := r.stmt(ctx, tx, r.lockSQL)
	for len(*cands) > 0 {
		s := (*cands)[0]
		*cands = (*cands)[1:]
		if !r.hold(s) {
			continue // another worker of this relay has it: no need to ask
		}
		err := lock.QueryRowContext(ctx, s).Scan(&failures)
		if err != nil {
			r.unhold(s)
		}
		if errors.Is(err, sql.ErrNoRows) {
			continue // held by another relay, or just put in backoff
		}
		if err != nil {
			return 0, 0, false, err
		}
		return s, failures, true, nil
	}
	return 0, 0, false, nil
}

// hold records that a worker of this relay is about to lock shard, so that
// its other workers skip it without a query; it returns false when one
// already does.
func (r *Relay) hold(shard int) bool {
	r.heldMu.Lock()
	defer r.heldMu.Unlock()
	if r.held[shard] {
		return false
	}
	r.held[shard] = true
	return true
}

// unhold ends hold, once the shard's transaction ended.
func (r *Relay) unhold(shard int) {
	r.heldMu.Lock()
	delete(r.held, shard)
	r.heldMu.Unlock()
}

func (r *Relay) fetch(ctx context.Context, tx *sql.Tx, shard int) ([]row, error) {
	rs, err := r.stmt(ctx, tx, r.fetchSQL).QueryContext(ctx, shard, r.opts.BatchSize)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := make([]row, 0, r.opts.BatchSize)
	msgs := make([]broker.Message, r.opts.BatchSize) // one allocation for the batch's messages
	var topic, key, headers sql.RawBytes             // the driver's memory, valid until Next
	for rs.Next() {
		if len(out) == len(msgs) {
			return nil, fmt.Errorf("more than %d rows", len(msgs))
		}
		var rw row
		m := &msgs[len(out)]
		if err := rs.Scan(&rw.seq, &topic, &m.ID, &key, &m.Payload, &headers); err != nil {
			return nil, err
		}
		if n := len(out); n > 0 && out[n-1].topic == string(topic) { // no allocation to compare
			rw.topic = out[n-1].topic
		} else {
			rw.topic = string(topic)
		}
		m.Key = string(key)
		if headers != nil {
			if err := json.Unmarshal(headers, &m.Headers); err != nil {
				return nil, fmt.Errorf("message %d: headers: %w", rw.seq, err)
			}
		}
		rw.msg = m
		out = append(out, rw)
	}
	return out, rs.Err()
}

// publish publishes rows in order and returns the sequence numbers of those
// the broker accepted. A Publish call carries consecutive rows of one topic
// with no key twice, so that a message that fails never has a later message
// of its key accepted in the same call. At the first failed call it stops:
// the failed messages and everything after them stay for the next batch,
// so no key's messages are published out of order.
func (r *Relay) publish(ctx context.Context, rows []row) (accepted []int64, err error) {
	keys := make(map[string]struct{}, len(rows))
	msgs := make([]*broker.Message, 0, len(rows))
	for i := 0; i < len(rows); {
		j := i
		clear(keys)
		msgs = msgs[:0]
		for ; j < len(rows) && rows[j].topic == rows[i].topic; j++ {
			if k := rows[j].msg.Key; k != "" {
				if _, dup := keys[k]; dup {
					break
				}
				keys[k] = struct{}{}
			}
			msgs = append(msgs, rows[j].msg)
		}
		r.inFlight.acquire(len(msgs)) // waits for other batches' calls, each bounded by Timeout
		err := r.pub.Publish(ctx, rows[i].topic, msgs...)
		r.inFlight.release(len(msgs))
		if err == nil {
			for _, rw := range rows[i:j] {
				accepted = append(accepted, rw.seq)
			}
			i = j
			continue
		}
		var pe *broker.PublishError
		if errors.As(err, &pe) && len(pe.Failed) > 0 {
			failed := make(map[int]bool, len(pe.Failed))
			valid := true
			for _, f := range pe.Failed {
				if f.Index < 0 || f.Index >= j-i {
					valid = false
				}
				failed[f.Index] = true
			}
			if valid {
				for k, rw := range rows[i:j] {
					if !failed[k] {
						accepted = append(accepted, rw.seq)
					}
				}
			}
		}
		return accepted, err
	}
	return accepted, nil
}

// budget is a count of units shared by goroutines that take and give back
// several at a time, served first come, first served.
type budget struct {
	mu      sync.Mutex
	free    int
	waiting []budgetWaiter
}

type budgetWaiter struct {
	n     int
	ready chan struct{}
}

// acquire takes n units (at most the budget's total), waiting until they
// are free and every earlier caller was served.
func (b *budget) acquire(n int) {
	b.mu.Lock()
	if len(b.waiting) == 0 && b.free >= n {
		b.free -= n
		b.mu.Unlock()
		return
	}
	w := budgetWaiter{n, make(chan struct{})}
	b.waiting = append(b.waiting, w)
	b.mu.Unlock()
	<-w.ready
}

// release gives back n units taken by acquire.
func (b *budget) release(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.free += n
	for len(b.waiting) > 0 && b.free >= b.waiting[0].n {
		b.free -= b.waiting[0].n
		close(b.waiting[0].ready)
		b.waiting = b.waiting[1:]
	}
}

// backoff is the wait after n consecutive failures: MinBackoff doubled per
// failure, capped at MaxBackoff, ±20% jitter.
func (r *Relay) backoff(n int) time.Duration {
	d := r.opts.MinBackoff
	for i := 1; i < n && d < r.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, r.opts.MaxBackoff)
	return time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
}

// errorText is err's message, cut to 1 KiB, for the shards table.
func errorText(err error) string {
	s := err.Error()
	if len(s) > 1024 {
		s = s[:1024]
	}
	return strings.ToValidUTF8(s, "?")
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
