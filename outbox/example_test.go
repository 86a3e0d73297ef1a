package outbox_test

import (
	"context"
	"database/sql"
	"log"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/outbox"
)

// An order row and its event commit together; a relay publishes the event.
func Example() {
	ctx := context.Background()
	db, err := sql.Open("pgx", "postgres://app@127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	ob, err := outbox.New(db, outbox.Postgres, outbox.Options{})
	if err != nil {
		log.Fatal(err)
	}
	if err := ob.Migrate(ctx); err != nil { // or ob.Schema() in your migrations
		log.Fatal(err)
	}

	// In the request handler: one transaction, the application's own.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "INSERT INTO orders (id, total) VALUES ($1, $2)", "order-42", 1250); err != nil {
		log.Fatal(err)
	}
	if err := ob.Add(ctx, tx, "orders", &broker.Message{Key: "order-42", Payload: []byte(`{"event":"created"}`)}); err != nil {
		log.Fatal(err)
	}
	// A reminder, held by the relay for a day: scheduled delivery on any broker.
	reminder := &broker.Message{Key: "order-42", Payload: []byte(`{"event":"pay-reminder"}`)}
	if err := ob.AddAt(ctx, tx, time.Now().Add(24*time.Hour), "orders", reminder); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	// In one or more relay processes.
	b, err := broker.Open(ctx, "mem://")
	if err != nil {
		log.Fatal(err)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		log.Fatal(err)
	}
	relay, err := outbox.NewRelay(ob, pub, outbox.RelayOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := relay.Run(ctx); err != nil { // until ctx ends
		log.Fatal(err)
	}
}

// Depth and the age of the oldest due message as OpenTelemetry gauges,
// read from Stats at each collection.
func ExampleOutbox_Stats() {
	var ob *outbox.Outbox // from outbox.New
	meter := otel.Meter("myservice")
	depth, _ := meter.Int64ObservableGauge("queuekit.outbox.depth",
		metric.WithDescription("Messages in the outbox not yet published."), metric.WithUnit("{message}"))
	age, _ := meter.Float64ObservableGauge("queuekit.outbox.oldest_age",
		metric.WithDescription("How long the oldest due message has waited to be published."), metric.WithUnit("s"))
	_, err := meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		s, err := ob.Stats(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(depth, s.Depth)
		o.ObserveFloat64(age, s.OldestAge.Seconds())
		return nil
	}, depth, age)
	if err != nil {
		log.Fatal(err)
	}
}
