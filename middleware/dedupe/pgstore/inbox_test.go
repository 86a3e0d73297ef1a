package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe/dedupetest"
	"github.com/queuekit/queuekit/middleware/dedupe/pgstore"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
)

// orders is the handler's own table; the inbox handler inserts one row per
// message in it, inside the inbox transaction.
type orders struct {
	pool  *pgxpool.Pool
	table string
}

func newOrders(t *testing.T, pool *pgxpool.Pool) orders {
	o := orders{pool, pgx.Identifier{table(t, pool, "orders")}.Sanitize()}
	if _, err := pool.Exec(context.Background(), "CREATE TABLE "+o.table+" (id text, payload text)"); err != nil {
		t.Fatal(err)
	}
	return o
}

func (o orders) insert(ctx context.Context, tx pgx.Tx, m *broker.Message) error {
	_, err := tx.Exec(ctx, "INSERT INTO "+o.table+" VALUES ($1, $2)", m.ID, string(m.Payload))
	return err
}

func (o orders) count(t *testing.T) int {
	var n int
	if err := o.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+o.table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func inbox(t *testing.T, db pgstore.DB, name string, opts pgstore.InboxOptions) *pgstore.Inbox {
	t.Helper()
	opts.Table = name
	in, err := pgstore.NewInbox(context.Background(), db, opts)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestInboxCommitsEffectsAndMarkTogether(t *testing.T) {
	pool := db(t)
	o := newOrders(t, pool)
	var dups atomic.Int32
	in := inbox(t, pool, table(t, pool, "inbox"), pgstore.InboxOptions{OnDuplicate: func(*broker.Message) { dups.Add(1) }})
	boom := errors.New("boom")
	var fail atomic.Bool
	fail.Store(true)
	h := in.Handler(func(ctx context.Context, tx pgx.Tx, m *broker.Message) error {
		if err := o.insert(ctx, tx, m); err != nil {
			return err
		}
		if fail.Load() {
			return boom // after writing: the write must roll back
		}
		return nil
	})
	if middleware.Stages(h)[0] != "dedupe" {
		t.Fatalf("inbox stage %v", middleware.Stages(h))
	}
	ctx := context.Background()
	m := &broker.Message{ID: "o-1", Payload: []byte("pizza")}
	if err := h.Handle(ctx, m); !errors.Is(err, boom) {
		t.Fatalf("failing handler: %v", err)
	}
	if n := o.count(t); n != 0 {
		t.Fatalf("%d rows after a failed handler: its writes were not rolled back", n)
	}
	if ok, _ := in.Processed(ctx, "o-1"); ok {
		t.Fatal("a failed message was recorded as processed")
	}
	fail.Store(false)
	for range 3 {
		if err := h.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if n := o.count(t); n != 1 || dups.Load() != 2 {
		t.Fatalf("%d rows and %d duplicates after three deliveries, want 1 and 2", n, dups.Load())
	}
	if ok, _ := in.Processed(ctx, "o-1"); !ok {
		t.Fatal("not recorded as processed")
	}
}

// The process dies mid-handler, after its writes and before the commit: its
// connection closes, the server rolls the transaction back, and the
// redelivery is handled (the gap that a separate store leaves is closed).
func TestInboxCrashMidHandler(t *testing.T) {
	pool := db(t)
	o := newOrders(t, pool)
	name := table(t, pool, "inbox")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testenv.Postgres(t)) // the crashing process's own connection
	if err != nil {
		t.Fatal(err)
	}
	crashed := make(chan struct{})
	dying := inbox(t, conn, name, pgstore.InboxOptions{}).Handler(func(ctx context.Context, tx pgx.Tx, m *broker.Message) error {
		if err := o.insert(ctx, tx, m); err != nil {
			return err
		}
		_ = tx.Conn().Close(ctx) // the process dies: its connection goes
		close(crashed)
		runtime.Goexit()
		return nil
	})
	go func() { _ = dying.Handle(ctx, &broker.Message{ID: "o-1"}) }()
	<-crashed

	h := inbox(t, pool, name, pgstore.InboxOptions{}).Handler(o.insert)
	mwtest.Eventually(t, 10*time.Second, func() bool { return h.Handle(ctx, &broker.Message{ID: "o-1"}) == nil },
		"the redelivery was never handled")
	if n := o.count(t); n != 1 {
		t.Fatalf("%d rows, want 1: the crashed attempt's write must be gone and the redelivery's kept", n)
	}
}

func TestInboxDefersACopyInFlight(t *testing.T) {
	pool := db(t)
	o := newOrders(t, pool)
	in := inbox(t, pool, table(t, pool, "inbox"), pgstore.InboxOptions{InFlightDelay: 42 * time.Millisecond})
	started, finish := make(chan struct{}), make(chan struct{})
	var runs atomic.Int32
	h := in.Handler(func(ctx context.Context, tx pgx.Tx, m *broker.Message) error {
		if runs.Add(1) == 1 {
			close(started)
			<-finish
		}
		return o.insert(ctx, tx, m)
	})
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { first <- h.Handle(ctx, &broker.Message{ID: "o-1"}) }()
	<-started
	err := h.Handle(ctx, &broker.Message{ID: "o-1"})
	if d, ok := broker.RetryDelay(err); !errors.Is(err, broker.ErrInFlight) || !ok || d != 42*time.Millisecond {
		t.Fatalf("copy during the first: %v, want ErrInFlight after 42ms (without waiting for the first)", err)
	}
	close(finish)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := h.Handle(ctx, &broker.Message{ID: "o-1"}); err != nil || runs.Load() != 1 || o.count(t) != 1 {
		t.Fatalf("redelivered copy: %v, runs %d, rows %d; want a skipped duplicate", err, runs.Load(), o.count(t))
	}
}

// Over real brokers: every message published twice, consumed by 4 handlers
// at once; each has exactly one row.
func TestInboxOverBrokers(t *testing.T) {
	pool := db(t)
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		o := newOrders(t, pool)
		in := inbox(t, pool, table(t, pool, "inbox"), pgstore.InboxOptions{InFlightDelay: 20 * time.Millisecond})
		topic := e.Topic("inbox")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		var acked atomic.Int32
		h := in.Handler(o.insert)
		var msgs []*broker.Message
		for i := range 50 {
			id := fmt.Sprint("o-", i)
			msgs = append(msgs, &broker.Message{ID: id, Payload: []byte("x")}, &broker.Message{ID: id, Payload: []byte("x")})
		}
		e.Publish(t, topic, msgs...)
		mwtest.Consume(t, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			err := h.Handle(ctx, m)
			if err == nil {
				acked.Add(1)
			}
			return err
		}), broker.ConsumeOptions{Concurrency: 4})
		mwtest.Eventually(t, 30*time.Second, func() bool { return acked.Load() == 100 }, "acked %d of 100", acked.Load())
		var rows, distinct int
		if err := pool.QueryRow(context.Background(), "SELECT count(*), count(DISTINCT id) FROM "+o.table).Scan(&rows, &distinct); err != nil {
			t.Fatal(err)
		}
		if rows != 50 || distinct != 50 {
			t.Fatalf("%d rows for %d ids, want 50 and 50", rows, distinct)
		}
	})
}

// While PostgreSQL is down, the inbox's consumer backs off instead of
// nacking at once.
func TestInboxUnavailable(t *testing.T) {
	pool, p := proxied(t)
	in := inbox(t, pool, table(t, db(t), "inbox"), pgstore.InboxOptions{})
	p.Cut()
	dedupetest.UnavailableStep(t, func(next broker.Handler) broker.Handler {
		return in.Handler(func(ctx context.Context, _ pgx.Tx, m *broker.Message) error { return next.Handle(ctx, m) })
	})
}
