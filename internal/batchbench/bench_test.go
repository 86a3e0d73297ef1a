package batchbench_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/internal/testenv"
)

// BenchmarkConsumePostgres/single handles each message with one INSERT of
// one row (broker.Consume); /queuekit handles up to 100 messages with one
// INSERT of their rows (broker.ConsumeBatch); both with 4 handlers, over the
// memory broker, so that the database round trip is the cost per call. A
// producer goroutine publishes b.N messages (64 per Publish) while the
// consumer runs; the clock stops when every row is written and every
// message acked. Each reports msgs/s and allocs/msg (every goroutine,
// the database driver's included).
func BenchmarkConsumePostgres(b *testing.B) {
	dsn := testenv.Postgres(b)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	const concurrency = 4
	b.Run("single", func(b *testing.B) {
		table := newTable(b, pool)
		insert := fmt.Sprintf("INSERT INTO %s (id, payload) VALUES ($1, $2)", table)
		run(b, pool, table, func(ctx context.Context, sub *broker.Subscriber, done func(int)) error {
			h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				if _, err := pool.Exec(ctx, insert, m.ID, m.Payload); err != nil {
					return err
				}
				done(1)
				return nil
			})
			return broker.Consume(ctx, sub, h, broker.ConsumeOptions{Concurrency: concurrency})
		})
	})
	b.Run("queuekit", func(b *testing.B) {
		table := newTable(b, pool)
		insert := fmt.Sprintf("INSERT INTO %s (id, payload) SELECT * FROM unnest($1::text[], $2::bytea[])", table)
		run(b, pool, table, func(ctx context.Context, sub *broker.Subscriber, done func(int)) error {
			h := broker.BatchHandlerFunc(func(ctx context.Context, ms []*broker.Message) []error {
				ids := make([]string, len(ms))
				payloads := make([][]byte, len(ms))
				for i, m := range ms {
					ids[i], payloads[i] = m.ID, m.Payload
				}
				if _, err := pool.Exec(ctx, insert, ids, payloads); err != nil {
					return broker.FailAll(len(ms), err)
				}
				done(len(ms))
				return nil
			})
			return broker.ConsumeBatch(ctx, sub, h, broker.BatchOptions{MaxBatch: 100, ConsumeOptions: broker.ConsumeOptions{Concurrency: concurrency}})
		})
	})
}

// newTable creates a table of the benchmark's own, dropped at its end.
func newTable(b *testing.B, pool *pgxpool.Pool) string {
	b.Helper()
	table := fmt.Sprintf("batchbench_%08x", rand.Uint32())
	if _, err := pool.Exec(context.Background(), "CREATE TABLE "+table+" (id text PRIMARY KEY, payload bytea NOT NULL)"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP TABLE "+table) })
	return table
}

// run publishes b.N messages while consume handles them, and reports
// msgs/s and allocs/msg over the time it takes.
func run(b *testing.B, pool *pgxpool.Pool, table string, consume func(ctx context.Context, sub *broker.Subscriber, done func(int)) error) {
	ctx := context.Background()
	br := broker.New(memory.New(memory.Options{}))
	defer br.Close(ctx)
	sub, err := br.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "rows"})
	if err != nil {
		b.Fatal(err)
	}
	pub, err := br.NewPublisher(ctx)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 64)
	var written atomic.Int64
	all := make(chan struct{})
	n := int64(b.N)
	done := func(k int) {
		if written.Add(int64(k)) == n {
			close(all)
		}
	}
	meter := benchmeter.Start(b)
	cctx, stop := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() { consumed <- consume(cctx, sub, done) }()
	go func() {
		ms := make([]*broker.Message, 64)
		for i := range ms {
			ms[i] = &broker.Message{}
		}
		for sent := 0; sent < b.N; sent += len(ms) {
			k := min(len(ms), b.N-sent)
			for _, m := range ms[:k] {
				m.ID, m.Payload = "", payload
			}
			if err := pub.Publish(ctx, "rows", ms[:k]...); err != nil {
				panic(err)
			}
		}
	}()
	<-all
	stop()
	if err := <-consumed; err != nil {
		b.Fatal(err)
	}
	meter.Stop(b.N)
	var rows int64
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&rows); err != nil {
		b.Fatal(err)
	}
	if rows != n {
		b.Fatalf("%d rows written for %d messages", rows, n)
	}
}
