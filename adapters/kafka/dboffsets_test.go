package kafka

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // database/sql driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// The DB-offsets kill test runs ConsumeTx in a child process: this test
// binary again, with dbOffsetsChildEnv set, which init catches before any
// test runs.
const dbOffsetsChildEnv = "QUEUEKIT_KAFKA_DBOFFSETS_CHILD"

func init() {
	if os.Getenv(dbOffsetsChildEnv) != "" {
		os.Exit(runDBOffsetsChild())
	}
}

var tableSeq atomic.Int64

// dbFor opens the test database of dialect d (skipping t when the server
// is not running) and closes it when t ends.
func dbFor(t testing.TB, d SQLDialect) *sql.DB {
	t.Helper()
	driverName, dsn := "pgx", ""
	if d == MySQL {
		driverName, dsn = "mysql", testenv.MariaDB(t)
	} else {
		dsn = testenv.Postgres(t)
	}
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.PingContext(testCtx(t, 10*time.Second)); err != nil {
		t.Fatalf("ping %v: %v", d, err)
	}
	return db
}

// tableName returns a table name of t's own.
func tableName(prefix string) string {
	return fmt.Sprintf("%s_%d_%d", prefix, time.Now().UnixNano()%1e9, tableSeq.Add(1))
}

// testStore migrates an offsets table of t's own and drops it when t ends.
func testStore(t testing.TB, db *sql.DB, d SQLDialect) OffsetStore {
	t.Helper()
	s := OffsetStore{DB: db, Dialect: d, Table: tableName("qk_offsets")}
	if err := s.Migrate(testCtx(t, 10*time.Second)); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	t.Cleanup(func() { _, _ = db.Exec("DROP TABLE " + s.Table) })
	return s
}

// effectsTable creates the table the handlers write one row per handled
// input to. It has no unique constraint, so that a duplicate effect would
// be counted, not refused.
func effectsTable(t testing.TB, db *sql.DB) string {
	t.Helper()
	name := tableName("qk_effects")
	if _, err := db.Exec(`CREATE TABLE ` + name + ` (input_id VARCHAR(64) NOT NULL, run INT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.Exec("DROP TABLE " + name) })
	return name
}

// insertEffect is the handlers' effect: one row per input.
func insertEffect(ctx context.Context, tx *sql.Tx, d SQLDialect, table string, m *broker.Message, run int) error {
	q := `INSERT INTO ` + table + ` (input_id, run) VALUES ($1, $2)`
	if d == MySQL {
		q = `INSERT INTO ` + table + ` (input_id, run) VALUES (?, ?)`
	}
	_, err := tx.ExecContext(ctx, q, m.ID, run)
	return err
}

// checkExactlyOnce counts the effects: every id of want exactly once, and
// nothing else.
func checkExactlyOnce(t *testing.T, db *sql.DB, table string, want []string) {
	t.Helper()
	var rows, distinct int
	if err := db.QueryRow(`SELECT COUNT(*), COUNT(DISTINCT input_id) FROM `+table).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	r, err := db.Query(`SELECT input_id, COUNT(*) FROM ` + table + ` GROUP BY input_id HAVING COUNT(*) > 1 ORDER BY input_id`)
	if err != nil {
		t.Fatal(err)
	}
	var dups []string
	for r.Next() {
		var id string
		var n int
		if err := r.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		if len(dups) < 5 {
			dups = append(dups, fmt.Sprintf("%s×%d", id, n))
		}
	}
	_ = r.Close()
	got := map[string]bool{}
	r, err = db.Query(`SELECT DISTINCT input_id FROM ` + table)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var id string
		if err := r.Scan(&id); err != nil {
			t.Fatal(err)
		}
		got[id] = true
	}
	_ = r.Close()
	var missing []string
	for _, id := range want {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	if rows != len(want) || distinct != len(want) || len(dups) > 0 || len(missing) > 0 {
		t.Fatalf("effects: %d rows, %d distinct inputs, want %d of each; duplicated (first 5): %v; missing: %d (first: %.5q)",
			rows, distinct, len(want), dups, len(missing), missing)
	}
}

// publishN publishes n messages with payloads "0".."n-1" and returns their
// IDs.
func publishN(t testing.TB, b *Broker, topic string, n int) []string {
	t.Helper()
	msgs := make([]*broker.Message, n)
	ids := make([]string, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Payload: []byte(strconv.Itoa(i))}
	}
	publish(t, b, topic, msgs...)
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

// waitStored waits until the offsets stored for group reach the end of
// every partition of topic: everything published was consumed and
// committed in the database.
func waitStored(t testing.TB, s OffsetStore, b *Broker, topic, group string, done <-chan error) {
	t.Helper()
	ends, err := b.Admin().ListEndOffsets(testCtx(t, 10*time.Second), topic)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(45 * time.Second)
	for {
		stored, err := s.Offsets(testCtx(t, 10*time.Second), topic, group)
		if err != nil {
			t.Fatal(err)
		}
		behind := 0
		ends.Each(func(o kadm.ListedOffset) {
			if stored[o.Partition] < o.Offset {
				behind++
			}
		})
		if behind == 0 {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("ConsumeTx returned %v before consuming everything (stored %v)", err, stored)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored offsets %v did not reach the end offsets of %s in 45s", stored, topic)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// consumeTx runs ConsumeTx in a goroutine until the returned stop is
// called; stop returns ConsumeTx's error.
func consumeTx(b *Broker, opts ConsumeTxOptions, h TxHandler) (done <-chan error, stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- b.ConsumeTx(ctx, opts, h) }()
	var once sync.Once
	var err error
	return ch, func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-ch:
			case <-time.After(30 * time.Second):
				err = errors.New("ConsumeTx did not return within 30s of its ctx ending")
			}
		})
		return err
	}
}

// TestConsumeTxSurvivesKills is issue 13's proof: a consumer with its
// offsets in PostgreSQL, whose handler inserts one row per input in the
// same transaction, is killed with SIGKILL mid-stream four times at random
// points — twice while blocked inside a batch's transaction, twice at
// whatever it was doing — then a last consumer finishes the topic. Every
// input's effect is in the database exactly once (counted: the effect
// table has no unique constraint), although the kills made the consumers
// handle some inputs more than once.
func TestConsumeTxSurvivesKills(t *testing.T) {
	const n, kills = 2000, 4
	db := dbFor(t, PostgreSQL)
	seeds := testenv.Kafka(t)
	session := childSession(t)
	b := testBroker(t, Options{SessionTimeout: session})
	store := testStore(t, db, PostgreSQL)
	effects := effectsTable(t, db)
	topic, group := newTopic(t), "dboffsets"
	if err := b.Declare(testCtx(t, 20*time.Second), topic, []string{group}); err != nil {
		t.Fatal(err)
	}
	ids := publishN(t, b, topic, n)

	calls := 0 // handler calls, in every process
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	batches := []int{1, 16, 100, 7}
	for run := 1; run <= kills; run++ {
		var committed int
		if err := db.QueryRow(`SELECT COUNT(*) FROM ` + effects).Scan(&committed); err != nil {
			t.Fatal(err)
		}
		left := n - committed
		if left < 2 {
			t.Fatalf("run %d: only %d inputs left to consume: the kills came too late", run, left)
		}
		at := 1 + rng.IntN(min(left-1, 300)) // a handler call that will happen
		block := run%2 == 1
		cmd, lines := startDBOffsetsChild(t, dbOffsetsChild{
			seeds: seeds, topic: topic, group: group, table: store.Table, effects: effects,
			batch: batches[(run-1)%len(batches)], run: run, session: session, blockAt: map[bool]int{true: at}[block],
		})
		seen := 0
		timeout := time.After(45 * time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("run %d: the child exited after %d handler calls", run, seen)
				}
				if strings.HasPrefix(l, "handled ") {
					seen++
				}
				if (block && l == midstream) || (!block && seen == at) {
					break read
				}
			case <-timeout:
				t.Fatalf("run %d: the child made %d handler calls in 45s, waiting for %d", run, seen, at)
			}
		}
		_ = cmd.Process.Kill() // SIGKILL: no rollback, no commit, no leaving the group
		_ = cmd.Wait()
		for l := range lines {
			if strings.HasPrefix(l, "handled ") {
				seen++
			}
		}
		calls += seen
		t.Logf("run %d (MaxBatch %d): killed after handler call %d (%s); %d calls in all", run, batches[(run-1)%len(batches)], at,
			map[bool]string{true: "blocked inside its transaction", false: "while running"}[block], seen)
	}

	var last atomic.Int64
	done, stop := consumeTx(b, ConsumeTxOptions{Topic: topic, Group: group, Store: store, MaxBatch: 50},
		func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
			last.Add(1)
			return insertEffect(ctx, tx, PostgreSQL, effects, m, kills+1)
		})
	waitStored(t, store, b, topic, group, done)
	if err := stop(); err != nil {
		t.Fatalf("ConsumeTx: %v", err)
	}
	calls += int(last.Load())
	checkExactlyOnce(t, db, effects, ids)
	t.Logf("%d inputs, %d kills: %d handler calls (%d redone after rolled-back transactions), each effect committed once", n, kills, calls, calls-n)
	if calls <= n {
		t.Fatalf("control: %d kills inside transactions should have made the consumers handle some inputs again, but there were only %d handler calls for %d inputs", kills/2, calls, n)
	}
}

// dbOffsetsChild is the configuration of a child consumer.
type dbOffsetsChild struct {
	seeds                        []string
	topic, group, table, effects string
	batch, run, blockAt          int
	session                      time.Duration
}

func startDBOffsetsChild(t *testing.T, c dbOffsetsChild) (*exec.Cmd, <-chan string) {
	t.Helper()
	return testenv.StartChild(t, append(os.Environ(),
		dbOffsetsChildEnv+"=1",
		"QUEUEKIT_KAFKA_BROKERS="+strings.Join(c.seeds, ","),
		"QUEUEKIT_POSTGRES_DSN="+testenv.Postgres(t),
		"QK_DBO_TOPIC="+c.topic, "QK_DBO_GROUP="+c.group, "QK_DBO_TABLE="+c.table, "QK_DBO_EFFECTS="+c.effects,
		"QK_DBO_BATCH="+strconv.Itoa(c.batch), "QK_DBO_RUN="+strconv.Itoa(c.run), "QK_DBO_BLOCK_AT="+strconv.Itoa(c.blockAt),
		"QK_DBO_SESSION="+c.session.String()))
}

// runDBOffsetsChild is the child's main: ConsumeTx with a handler that
// inserts the input's effect and prints "handled <id>"; at handler call
// QK_DBO_BLOCK_AT (if > 0) it prints midstream and blocks, its
// transaction open, until it is killed.
func runDBOffsetsChild() int {
	env := os.Getenv
	batch, _ := strconv.Atoi(env("QK_DBO_BATCH"))
	run, _ := strconv.Atoi(env("QK_DBO_RUN"))
	blockAt, _ := strconv.ParseInt(env("QK_DBO_BLOCK_AT"), 10, 64)
	session, _ := time.ParseDuration(env("QK_DBO_SESSION"))
	ctx := context.Background()
	db, err := sql.Open("pgx", env("QUEUEKIT_POSTGRES_DSN"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	b, err := New(ctx, Options{Brokers: strings.Split(env("QUEUEKIT_KAFKA_BROKERS"), ","), SessionTimeout: session})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	effects := env("QK_DBO_EFFECTS")
	var calls atomic.Int64
	err = b.ConsumeTx(ctx, ConsumeTxOptions{
		Topic: env("QK_DBO_TOPIC"), Group: env("QK_DBO_GROUP"), MaxBatch: batch,
		Store: OffsetStore{DB: db, Table: env("QK_DBO_TABLE")},
	}, func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
		if err := insertEffect(ctx, tx, PostgreSQL, effects, m, run); err != nil {
			return err
		}
		fmt.Println("handled", m.ID)
		if calls.Add(1) == blockAt {
			fmt.Println(midstream)
			select {} // killed here, the transaction open
		}
		return nil
	})
	fmt.Fprintln(os.Stderr, "ConsumeTx returned", err)
	return 3
}

// TestConsumeTxRebalance moves partitions between two consumers of a group
// while they consume: A consumes alone, B joins (a rebalance hands it some
// of A's partitions), both consume, A stops mid-stream (B takes A's
// partitions and the rest). Every effect is committed exactly once.
func TestConsumeTxRebalance(t *testing.T) {
	db := dbFor(t, PostgreSQL)
	b := testBroker(t, Options{Partitions: 6, SessionTimeout: childSession(t)})
	store := testStore(t, db, PostgreSQL)
	effects := effectsTable(t, db)
	topic, group := newTopic(t), "rebalance"
	if err := b.Declare(testCtx(t, 20*time.Second), topic, []string{group}); err != nil {
		t.Fatal(err)
	}
	ids := publishN(t, b, topic, 600)
	var handledA, handledB atomic.Int64
	reachedA, reachedB := make(chan struct{}), make(chan struct{})
	handler := func(run int, count *atomic.Int64, reached chan struct{}, at int64) TxHandler {
		return func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
			if count.Add(1) == at {
				close(reached)
			}
			return insertEffect(ctx, tx, PostgreSQL, effects, m, run)
		}
	}
	opts := ConsumeTxOptions{Topic: topic, Group: group, Store: store, MaxBatch: 10}
	doneA, stopA := consumeTx(b, opts, handler(1, &handledA, reachedA, 620))
	waitStored(t, store, b, topic, group, doneA)

	assignedB := make(chan struct{})
	var once sync.Once
	optsB := opts
	optsB.ClientOptions = []kgo.Opt{kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
		if len(m[topic]) > 0 {
			once.Do(func() { close(assignedB) })
		}
	})}
	doneB, stopB := consumeTx(b, optsB, handler(2, &handledB, reachedB, 20))
	select {
	case <-assignedB:
	case err := <-doneB:
		t.Fatalf("B's ConsumeTx returned %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("B was assigned no partition within 30s")
	}
	// Both consume the next messages; A stops mid-stream.
	ids = append(ids, publishN(t, b, topic, 1500)...)
	for _, reached := range []chan struct{}{reachedA, reachedB} {
		select {
		case <-reached:
		case <-time.After(30 * time.Second):
			t.Fatalf("after B joined, A handled %d, B %d in 30s; want 620 and 20", handledA.Load(), handledB.Load())
		}
	}
	if err := stopA(); err != nil {
		t.Fatalf("A's ConsumeTx: %v", err)
	}
	waitStored(t, store, b, topic, group, doneB)
	if err := stopB(); err != nil {
		t.Fatalf("B's ConsumeTx: %v", err)
	}
	checkExactlyOnce(t, db, effects, ids)
	t.Logf("A handled %d, B %d of %d", handledA.Load(), handledB.Load(), len(ids))
	if int(handledA.Load()+handledB.Load()) < len(ids) {
		t.Fatalf("A handled %d, B %d: fewer than the %d effects committed", handledA.Load(), handledB.Load(), len(ids))
	}
}

// TestConsumeTxZombie stalls member A inside a batch's transaction until
// the group removes it and gives its partition to B. B's claim waits for
// A's transaction, so when A is released and commits, B starts after A's
// batch: every effect is committed once, and A's ConsumeTx ends without
// committing anything more (nil, or ErrFenced if it tried).
func TestConsumeTxZombie(t *testing.T) {
	db := dbFor(t, PostgreSQL)
	b := testBroker(t, Options{Partitions: 1, SessionTimeout: childSession(t)})
	store := testStore(t, db, PostgreSQL)
	effects := effectsTable(t, db)
	topic, group := newTopic(t), "zombie"
	if err := b.Declare(testCtx(t, 20*time.Second), topic, []string{group}); err != nil {
		t.Fatal(err)
	}
	ids := publishN(t, b, topic, 200)
	short := []kgo.Opt{kgo.RebalanceTimeout(2 * time.Second)}
	stalled, release := make(chan struct{}), make(chan struct{})
	var callsA, callsB atomic.Int64
	doneA, stopA := consumeTx(b, ConsumeTxOptions{Topic: topic, Group: group, Store: store, MaxBatch: 10, ClientOptions: short},
		func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
			if err := insertEffect(ctx, tx, PostgreSQL, effects, m, 1); err != nil {
				return err
			}
			if callsA.Add(1) == 15 { // in its second batch
				close(stalled)
				<-release
			}
			return nil
		})
	select {
	case <-stalled:
	case err := <-doneA:
		t.Fatalf("A's ConsumeTx returned %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("A did not reach its 15th message in 30s")
	}
	doneB, stopB := consumeTx(b, ConsumeTxOptions{Topic: topic, Group: group, Store: store, MaxBatch: 10, ClientOptions: short},
		func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
			callsB.Add(1)
			return insertEffect(ctx, tx, PostgreSQL, effects, m, 2)
		})
	waitLockWait(t, db, PostgreSQL, store.Table) // A was removed, B got the partition and claims it
	close(release)
	waitStored(t, store, b, topic, group, doneB)
	errA, errB := stopA(), stopB()
	if errA != nil && !errors.Is(errA, ErrFenced) {
		t.Fatalf("A's ConsumeTx: %v, want nil or ErrFenced", errA)
	}
	if errB != nil {
		t.Fatalf("B's ConsumeTx: %v", errB)
	}
	checkExactlyOnce(t, db, effects, ids)
	t.Logf("A handled %d (returned %v), B %d", callsA.Load(), errA, callsB.Load())
}

// TestConsumeTxHandlerError: a failing handler rolls its batch back and
// ends ConsumeTx with an error naming the record; the next ConsumeTx
// carries on from the stored offsets, so every effect is there once.
func TestConsumeTxHandlerError(t *testing.T) {
	db := dbFor(t, PostgreSQL)
	b := testBroker(t, Options{SessionTimeout: childSession(t)})
	store := testStore(t, db, PostgreSQL)
	effects := effectsTable(t, db)
	topic, group := newTopic(t), "failing"
	if err := b.Declare(testCtx(t, 20*time.Second), topic, []string{group}); err != nil {
		t.Fatal(err)
	}
	ids := publishN(t, b, topic, 90)
	boom := errors.New("boom")
	var calls atomic.Int64
	opts := ConsumeTxOptions{Topic: topic, Group: group, Store: store, MaxBatch: 20}
	err := b.ConsumeTx(testCtx(t, 30*time.Second), opts, func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
		if err := insertEffect(ctx, tx, PostgreSQL, effects, m, 1); err != nil {
			return err
		}
		if calls.Add(1) == 50 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("ConsumeTx returned %v, want the handler's error, saying the batch was rolled back", err)
	}
	var rows int
	if err := db.QueryRow(`SELECT COUNT(*) FROM ` + effects).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows >= 50 {
		t.Fatalf("%d effects committed after the handler failed on its 50th call: its batch was not rolled back", rows)
	}
	done, stop := consumeTx(b, opts, func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
		return insertEffect(ctx, tx, PostgreSQL, effects, m, 2)
	})
	waitStored(t, store, b, topic, group, done)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, db, effects, ids)

	// Kafka's commits followed the database's (committed when the
	// member left), so lag tools see the group caught up.
	lags, err := b.Lag(testCtx(t, 10*time.Second), topic, group)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lags {
		if l.Lag != 0 {
			t.Fatalf("Kafka lag of partition %d is %d after everything was consumed: %+v", l.Partition, l.Lag, l)
		}
	}
}

// TestConsumeTxWithoutTable: when the partitions cannot be claimed (here
// the offsets table was never created) ConsumeTx ends with the database's
// error instead of consuming from Kafka's offsets.
func TestConsumeTxWithoutTable(t *testing.T) {
	db := dbFor(t, PostgreSQL)
	b := testBroker(t, Options{SessionTimeout: childSession(t)})
	topic, group := newTopic(t), "notable"
	publishN(t, b, topic, 5)
	var calls atomic.Int64
	err := b.ConsumeTx(testCtx(t, 30*time.Second), ConsumeTxOptions{Topic: topic, Group: group,
		Store: OffsetStore{DB: db, Table: tableName("qk_missing")}},
		func(context.Context, *sql.Tx, *broker.Message) error { calls.Add(1); return nil })
	if err == nil || !strings.Contains(err.Error(), "claim partition") || driver.KindOf(err) != semantics.Transient {
		t.Fatalf("ConsumeTx without its table: %v, want a Transient claim error", err)
	}
	if calls.Load() != 0 {
		t.Fatalf("the handler ran %d times without a claim", calls.Load())
	}
}

// TestConsumeTxMySQL consumes on MariaDB, stopping halfway and starting
// again: every effect once.
func TestConsumeTxMySQL(t *testing.T) {
	db := dbFor(t, MySQL)
	b := testBroker(t, Options{SessionTimeout: childSession(t)})
	store := testStore(t, db, MySQL)
	effects := effectsTable(t, db)
	topic, group := newTopic(t), "mysql"
	if err := b.Declare(testCtx(t, 20*time.Second), topic, []string{group}); err != nil {
		t.Fatal(err)
	}
	ids := publishN(t, b, topic, 300)
	half := make(chan struct{})
	var calls atomic.Int64
	opts := ConsumeTxOptions{Topic: topic, Group: group, Store: store, MaxBatch: 7}
	_, stop := consumeTx(b, opts, func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
		if calls.Add(1) == 150 {
			close(half)
		}
		return insertEffect(ctx, tx, MySQL, effects, m, 1)
	})
	select {
	case <-half:
	case <-time.After(30 * time.Second):
		t.Fatal("150 messages not handled within 30s")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	done, stop := consumeTx(b, opts, func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
		return insertEffect(ctx, tx, MySQL, effects, m, 2)
	})
	waitStored(t, store, b, topic, group, done)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, db, effects, ids)
}

// TestDBOffsetsFence drives the offsets table directly, on PostgreSQL and
// MariaDB: a member whose partition was claimed by another cannot commit
// (its handler's writes roll back with the refused offset), no member can
// move a partition's offset backwards, and a claim made while the previous
// owner's batch is in flight waits for that batch and reads the offset it
// committed.
func TestDBOffsetsFence(t *testing.T) {
	for _, d := range []SQLDialect{PostgreSQL, MySQL} {
		t.Run(d.String(), func(t *testing.T) {
			db := dbFor(t, d)
			store := testStore(t, db, d)
			effects := effectsTable(t, db)
			q := offsetQueries(store)
			ctx := testCtx(t, 60*time.Second)
			const topic, group = "orders", "billing"
			mustClaim := func(owner string) claim {
				t.Helper()
				c, err := q.claimPartition(ctx, db, topic, group, 0, owner)
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			commitBatch := func(c claim, first, next int64) error {
				t.Helper()
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = tx.Rollback() }()
				if err := q.advance(ctx, tx, topic, group, 0, c, first, next); err != nil {
					return err
				}
				for o := first; o < next; o++ {
					m := &broker.Message{ID: fmt.Sprint("in-", o), Payload: []byte(fmt.Sprint(o))}
					if err := insertEffect(ctx, tx, d, effects, m, 0); err != nil {
						t.Fatal(err)
					}
				}
				return tx.Commit()
			}
			stored := func() int64 {
				t.Helper()
				offs, err := store.Offsets(ctx, topic, group)
				if err != nil {
					t.Fatal(err)
				}
				return offs[0]
			}
			count := func() (n int64) {
				t.Helper()
				if err := db.QueryRow(`SELECT COUNT(*) FROM ` + effects).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}

			a := mustClaim("A")
			if a.next != -1 || a.epoch != 1 {
				t.Fatalf("first claim: %+v, want next -1 (nothing stored), epoch 1", a)
			}
			if err := commitBatch(a, 0, 10); err != nil {
				t.Fatalf("A's first batch: %v", err)
			}
			bc := mustClaim("B") // A lost the partition, B has it now
			if bc.next != 10 || bc.epoch != 2 {
				t.Fatalf("B's claim: %+v, want next 10, epoch 2", bc)
			}
			err := commitBatch(claim{epoch: a.epoch, next: 10}, 10, 20) // A does not know yet
			if !errors.Is(err, ErrFenced) || driver.KindOf(err) != semantics.Transient {
				t.Fatalf("A's batch after B's claim: %v, want ErrFenced (Transient)", err)
			}
			if got := count(); got != 10 || stored() != 10 {
				t.Fatalf("after the fenced batch: %d effects, stored offset %d; want 10 and 10", got, stored())
			}
			if err := commitBatch(bc, 5, 12); !errors.Is(err, ErrFenced) {
				t.Fatalf("a batch starting before the stored offset: %v, want ErrFenced", err)
			}
			if err := commitBatch(bc, 10, 20); err != nil {
				t.Fatalf("B's batch: %v", err)
			}

			// C holds the partition with a batch in flight when D claims it.
			c := mustClaim("C")
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback() }()
			if err := q.advance(ctx, tx, topic, group, 0, c, 20, 30); err != nil {
				t.Fatal(err)
			}
			claimed := make(chan claim, 1)
			go func() {
				cl, err := q.claimPartition(ctx, db, topic, group, 0, "D")
				if err != nil {
					t.Error(err)
				}
				claimed <- cl
			}()
			waitLockWait(t, db, d, store.Table)
			select {
			case cl := <-claimed:
				t.Fatalf("D's claim returned %+v while C's batch held the partition", cl)
			default:
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if got := <-claimed; got.next != 30 || got.epoch != c.epoch+1 {
				t.Fatalf("D's claim: %+v, want next 30 (C's committed batch), epoch %d", got, c.epoch+1)
			}
		})
	}
}

// waitLockWait waits until a claim on table waits for a row lock.
func waitLockWait(t *testing.T, db *sql.DB, d SQLDialect, table string) {
	t.Helper()
	q := `SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`
	if d == MySQL {
		// innodb_trx does not always list the waiting transaction; the
		// claim's INSERT still running is the sign (it cannot finish
		// before the batch holding the row commits).
		q = `SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE CONCAT('INSERT INTO ', ?, ' %')`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := db.QueryRow(q, table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			diag := `SELECT COALESCE(wait_event_type, ''), COALESCE(wait_event, ''), query FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%'`
			if d == MySQL {
				diag = `SELECT COALESCE(state, ''), COALESCE(command, ''), COALESCE(info, '') FROM information_schema.processlist WHERE info LIKE CONCAT('%', ?, '%')`
			}
			if rows, err := db.Query(diag, table); err == nil {
				for rows.Next() {
					var a, b, c string
					_ = rows.Scan(&a, &b, &c)
					t.Logf("statement on %s: %q %q %.80q", table, a, b, c)
				}
				_ = rows.Close()
			}
			t.Fatal("the second claim never waited for the row lock of the batch in flight")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConsumeTxInvalidArguments: bad options are refused before any I/O.
func TestConsumeTxInvalidArguments(t *testing.T) {
	b := &Broker{} // no I/O happens
	db := &sql.DB{}
	h := func(context.Context, *sql.Tx, *broker.Message) error { return nil }
	ok := ConsumeTxOptions{Topic: "t", Group: "g", Store: OffsetStore{DB: db}}
	for name, tc := range map[string]struct {
		opts ConsumeTxOptions
		h    TxHandler
	}{
		"no handler":    {ok, nil},
		"no topic":      {ConsumeTxOptions{Group: "g", Store: ok.Store}, h},
		"bad topic":     {ConsumeTxOptions{Topic: "a b", Group: "g", Store: ok.Store}, h},
		"no group":      {ConsumeTxOptions{Topic: "t", Store: ok.Store}, h},
		"no db":         {ConsumeTxOptions{Topic: "t", Group: "g"}, h},
		"bad table":     {ConsumeTxOptions{Topic: "t", Group: "g", Store: OffsetStore{DB: db, Table: "x; DROP TABLE y"}}, h},
		"bad dialect":   {ConsumeTxOptions{Topic: "t", Group: "g", Store: OffsetStore{DB: db, Dialect: 7}}, h},
		"batch < 0":     {ConsumeTxOptions{Topic: "t", Group: "g", Store: ok.Store, MaxBatch: -1}, h},
		"long group db": {ConsumeTxOptions{Topic: "t", Group: strings.Repeat("g", 256), Store: OffsetStore{DB: db, Dialect: MySQL}}, h},
	} {
		err := b.ConsumeTx(context.Background(), tc.opts, tc.h)
		if driver.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := (OffsetStore{Table: "bad-name"}).Schema(); driver.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("Schema of a bad table name: %v, want InvalidArgument", err)
	}
	if err := (OffsetStore{}).Migrate(context.Background()); driver.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("Migrate without DB: %v, want InvalidArgument", err)
	}
}
