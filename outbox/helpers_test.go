package outbox_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/outbox"
)

// database is one of the databases the tests run on.
type database struct {
	name    string
	driver  string
	dsn     func(testing.TB) string
	dialect outbox.Dialect
	process string // the server's command name, for the benchmarks' CPU figures
}

var databases = []database{
	{"postgres", "pgx", testenv.Postgres, outbox.Postgres, "postgres"},
	{"mariadb", "mysql", testenv.MariaDB, outbox.MySQL, "mariadbd"},
}

// forEachDB runs f once per database, as subtests.
func forEachDB(t *testing.T, f func(t *testing.T, d database)) {
	for _, d := range databases {
		t.Run(d.name, func(t *testing.T) { f(t, d) })
	}
}

// open opens the database and closes it when the test ends.
func (d database) open(t testing.TB) *sql.DB {
	t.Helper()
	dsn := d.dsn(t)
	db, err := sql.Open(d.driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		testenv.Unavailable(t, d.name, err, "see testenv."+map[string]string{"postgres": "Postgres", "mariadb": "MariaDB"}[d.name])
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func unique(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// newOutbox opens d, migrates an outbox with tables of the test's own and
// drops them when the test ends.
func newOutbox(t testing.TB, d database, opts outbox.Options) (*sql.DB, *outbox.Outbox) {
	t.Helper()
	db := d.open(t)
	if opts.Table == "" {
		opts.Table = unique("qktest_outbox")
	}
	ob, err := outbox.New(db, d.dialect, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropTables(db, ob) })
	if err := ob.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return db, ob
}

func dropTables(db *sql.DB, ob *outbox.Outbox) {
	tb := ob.Tables()
	for _, name := range []string{tb.Messages, tb.Shards, tb.Relays} {
		_, _ = db.Exec("DROP TABLE IF EXISTS " + name)
	}
}

// addTx adds msgs to topic in a transaction of their own and commits it.
func addTx(t testing.TB, db *sql.DB, ob *outbox.Outbox, topic string, msgs ...*broker.Message) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Add(ctx, tx, topic, msgs...); err != nil {
		_ = tx.Rollback()
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// brokerEnv is a broker the tests publish to and consume from.
type brokerEnv struct {
	name string
	b    *broker.Broker
	pub  *broker.Publisher
}

var brokerNames = []string{"memory", "rabbitmq"}

// openBroker opens the named broker; RabbitMQ's queues are deleted when
// the test ends.
func openBroker(t testing.TB, name string) *brokerEnv {
	t.Helper()
	ctx := context.Background()
	var b *broker.Broker
	switch name {
	case "memory":
		b = broker.New(memory.New(memory.Options{}))
	case "rabbitmq":
		url := testenv.RabbitMQ(t)
		var mu sync.Mutex
		var queues []string
		rb, err := rabbitmq.Dial(ctx, url, rabbitmq.Options{OnDeclare: func(q string) {
			mu.Lock()
			queues = append(queues, q)
			mu.Unlock()
		}})
		if err != nil {
			testenv.Unavailable(t, "RabbitMQ", err, "see testenv.RabbitMQ")
		}
		t.Cleanup(func() {
			mu.Lock()
			defer mu.Unlock()
			testenv.DeleteRabbitMQ(t, url, queues, nil)
		})
		b = broker.New(rb)
	default:
		t.Fatalf("unknown broker %s", name)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = pub.Close(ctx)
		_ = b.Close(ctx)
	})
	return &brokerEnv{name: name, b: b, pub: pub}
}

// collector records what a consumer receives, in order, and wakes waiters.
type collector struct {
	mu      sync.Mutex
	msgs    []*broker.Message
	at      []time.Time
	changed chan struct{}
}

func newCollector() *collector { return &collector{changed: make(chan struct{})} }

func (c *collector) add(m *broker.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m.Clone())
	c.at = append(c.at, time.Now())
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *collector) snapshot() ([]*broker.Message, []time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*broker.Message(nil), c.msgs...), append([]time.Time(nil), c.at...)
}

// waitFor waits until cond holds over what was received, or fails t.
func (c *collector) waitFor(t testing.TB, timeout time.Duration, what string, cond func(msgs []*broker.Message) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ok, ch, n := cond(c.msgs), c.changed, len(c.msgs)
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("after %v: %s (received %d)", timeout, what, n)
		}
	}
}

// consume subscribes to topic (before anything is published to it) and
// collects its messages with one handler at a time, until the test ends.
func consume(t testing.TB, e *brokerEnv, topic string) *collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := e.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "test"})
	if err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			c.add(m)
			return nil
		}), broker.ConsumeOptions{})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = sub.Close(context.Background())
	})
	return c
}

// runRelay runs r until the test ends, failing the test if Run fails.
func runRelay(t testing.TB, r *outbox.Relay) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay %s: %v", r.ID(), err)
		}
	})
}

// fastRelay returns relay options that poll and back off quickly, for tests.
func fastRelay(o outbox.RelayOptions) outbox.RelayOptions {
	if o.PollInterval == 0 {
		o.PollInterval = 10 * time.Millisecond
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = 5 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 50 * time.Millisecond
	}
	if o.OnError == nil {
		o.OnError = func(error) {}
	}
	return o
}

func newRelay(t testing.TB, ob *outbox.Outbox, pub outbox.Publisher, o outbox.RelayOptions) *outbox.Relay {
	t.Helper()
	r, err := outbox.NewRelay(ob, pub, fastRelay(o))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// waitDrained waits until the outbox has no unsent message.
func waitDrained(t testing.TB, ob *outbox.Outbox, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, err := ob.Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if s.Depth == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v the outbox still holds %d messages: %+v", timeout, s.Depth, s.Shards)
		}
		time.Sleep(20 * time.Millisecond) // polling the database: it sends no signal
	}
}

// faultyPublisher publishes with pub but, when fail says so for a call,
// refuses a random subset of the messages: it publishes the others, in
// order, and returns a *broker.PublishError naming the refused ones, as an
// adapter does when part of a batch fails. It counts what it published.
type faultyPublisher struct {
	pub  outbox.Publisher
	fail func(n int) []int // indexes to refuse, or nil

	mu        sync.Mutex
	published int
	calls     int
	refused   int
}

func (f *faultyPublisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	refuse := f.fail(len(msgs))
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	if len(refuse) == 0 {
		err := f.pub.Publish(ctx, topic, msgs...)
		if err == nil {
			f.count(len(msgs), 0)
		}
		return err
	}
	skip := map[int]bool{}
	pe := &broker.PublishError{}
	for _, i := range refuse {
		skip[i] = true
		pe.Failed = append(pe.Failed, broker.PublishFailure{Index: i, ID: msgs[i].ID, Err: errors.New("refused by the test")})
	}
	var keep []*broker.Message
	for i, m := range msgs {
		if !skip[i] {
			keep = append(keep, m)
		}
	}
	if len(keep) > 0 {
		if err := f.pub.Publish(ctx, topic, keep...); err != nil {
			return fmt.Errorf("faulty publisher: %w", err)
		}
	}
	f.count(len(keep), len(refuse))
	return pe
}

func (f *faultyPublisher) count(published, refused int) {
	f.mu.Lock()
	f.published += published
	f.refused += refused
	f.mu.Unlock()
}

func (f *faultyPublisher) stats() (published, refused, calls int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.published, f.refused, f.calls
}
