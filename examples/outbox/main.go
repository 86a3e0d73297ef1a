// Command outbox is the effectively-once example, end to end, on
// PostgreSQL: outbox → broker → inbox.
//
//   - The order service saves each order row and its "order.created" event
//     in one transaction, through the transactional outbox. Every 5th
//     order's card is declined after the event was added: the transaction
//     rolls back, and neither the order nor its event exists.
//   - A relay publishes the outbox's events to the broker, at least once and
//     in per-key order; one event is a payment reminder held 300 ms by the
//     outbox (scheduled delivery, on any broker).
//   - The shipping service consumes them through the transactional inbox of
//     middleware/dedupe/pgstore: its shipment row and the processed mark
//     commit together, so a redelivered event ships nothing twice.
//
// It prints what happened and exits non-zero if a committed order has no
// shipment, a rolled-back one has one, or anything was shipped twice.
//
//	go run ./examples/outbox                                # PostgreSQL at $QUEUEKIT_POSTGRES_DSN, mem:// broker
//	go run ./examples/outbox -broker amqp://guest:guest@127.0.0.1:5672/
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	_ "github.com/queuekit/queuekit/adapters/all"
)

func main() {
	dsn := flag.String("db", envOr("QUEUEKIT_POSTGRES_DSN", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"),
		"PostgreSQL URL (or QUEUEKIT_POSTGRES_DSN)")
	url := flag.String("broker", envOr("QUEUEKIT_BROKER", "mem://"), "broker URL (or QUEUEKIT_BROKER)")
	orders := flag.Int("orders", 50, "orders to place")
	timeout := flag.Duration("timeout", time.Minute, "give up after this long")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	name := "outbox_example_" + strconv.FormatInt(time.Now().UnixNano(), 36) // its own tables, dropped at the end
	if err := run(ctx, config{DSN: *dsn, Broker: *url, Name: name, Orders: *orders}, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "outbox:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
