// Command orders is queuekit's main example: order events keyed by order ID,
// handled by a consumer group at-least-once through the default middleware
// stack, with everything counted in a ledger.
//
//   - A producer publishes created / paid / shipped events for each order,
//     keyed by order ID, and publishes some events twice on purpose (same
//     message ID).
//   - Two competing consumers of group "billing" handle them with per-key
//     ordering and concurrent handlers, through middleware.Default: dlq ->
//     retry -> dedupe -> recover -> handler. The dedupe step (an idempotent
//     consumer) suppresses the duplicates.
//   - Every 8th event fails on its first attempt, and is retried by
//     redelivery with backoff; every 50th order carries a poison event that
//     always fails and ends in the dead-letter topic after 4 attempts.
//
// At the end it prints published, handled, duplicates suppressed, retried,
// dead-lettered and lost, and exits non-zero if the ledger disagrees (lost
// must be 0, and nothing may be handled twice).
//
//	go run ./examples/orders                                     # embedded mem:// broker
//	go run ./examples/orders -broker amqp://guest:guest@127.0.0.1:5672/
//	QUEUEKIT_BROKER=kafka://127.0.0.1:9092 go run ./examples/orders
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
	url := flag.String("broker", envOr("QUEUEKIT_BROKER", "mem://"), "broker URL (or QUEUEKIT_BROKER)")
	orders := flag.Int("orders", 200, "orders to simulate (3 events each)")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	topic := "orders-" + strconv.FormatInt(time.Now().UnixNano(), 36) // fresh per run
	if err := run(ctx, *url, topic, *orders, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
