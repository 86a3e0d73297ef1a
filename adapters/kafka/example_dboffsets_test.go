package kafka_test

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/queuekit/queuekit/adapters/kafka"
	"github.com/queuekit/queuekit/broker"
)

// Consume with the offsets in PostgreSQL: each shipment row commits with
// the offset of the order event that caused it, so a crash, a restart or a
// rebalance never ships an order twice or skips one.
func ExampleBroker_ConsumeTx() {
	ctx := context.Background()
	db, err := sql.Open("pgx", "postgres://app@127.0.0.1:5432/app")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()
	kb, err := kafka.New(ctx, kafka.Options{Brokers: []string{"127.0.0.1:9092"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer kb.Close(ctx)

	store := kafka.OffsetStore{DB: db} // table queuekit_offsets
	if err := store.Migrate(ctx); err != nil {
		fmt.Println(err)
		return
	}
	for ctx.Err() == nil { // ConsumeTx returns on a failure; nothing is lost, so start again
		err = kb.ConsumeTx(ctx, kafka.ConsumeTxOptions{Topic: "orders", Group: "shipping", Store: store},
			func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
				_, err := tx.ExecContext(ctx, "INSERT INTO shipments (order_id, event_id) VALUES ($1, $2)", m.Key, m.ID)
				return err // commits with the offset, or rolls back with it
			})
		if err != nil {
			fmt.Println("consume:", err)
			time.Sleep(time.Second) // the database or Kafka may be down: do not spin
		}
	}
}
