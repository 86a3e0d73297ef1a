// Command orders is queuekit's main example: order events keyed by order ID,
// handled by a consumer group at-least-once through the default middleware
// stack, with everything counted in a ledger.
//
//   - The consumers subscribe first — group "billing" on the topic, group
//     "ops" on its dead-letter topic — because a group receives what is
//     published after it was declared, and a publish to a topic without a
//     group fails with broker.ErrNoGroup on every broker.
//   - A producer publishes created / paid / shipped events for each order,
//     keyed by order ID, and publishes some events twice on purpose (same
//     message ID).
//   - Two competing consumers of group "billing" handle them with per-key
//     ordering and concurrent handlers, through middleware.Default: dlq ->
//     retry -> dedupe -> recover -> handler. The dedupe step (an idempotent
//     consumer) suppresses the duplicates. Where the broker cannot keep a
//     key's order (SQS standard queues refuse per-key ordering), the handler
//     sequences each order's events itself.
//   - Every 8th event fails on its first attempt, and is retried by
//     redelivery with backoff; every 50th order carries a poison event that
//     always fails and ends in the dead-letter topic after 4 attempts.
//
// At the end it prints published, handled, duplicates suppressed (or
// dropped by a broker that deduplicates IDs itself, as SQS FIFO does),
// retried, dead-lettered, reordered and lost, and exits non-zero if the
// ledger disagrees (lost and reordered must be 0, nothing may be handled
// twice) or if -timeout ran out first. Dead-lettered events are not lost.
//
// It links only the embedded mem:// broker, so that its first run compiles
// no broker SDK; build it with -tags allbrokers for the others:
//
//	go run ./examples/orders                     # embedded mem:// broker
//	go run -tags allbrokers ./examples/orders -broker amqp://guest:guest@127.0.0.1:5672/
//	QUEUEKIT_BROKER=kafka://127.0.0.1:9092 go run -tags allbrokers ./examples/orders
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory" // mem://; the others with -tags allbrokers (brokers.go)
	"github.com/queuekit/queuekit/examples/internal/linked"
)

func main() {
	url := flag.String("broker", envOr("QUEUEKIT_BROKER", "mem://"), "broker URL (or QUEUEKIT_BROKER)")
	orders := flag.Int("orders", 200, "orders to simulate (3 events each)")
	timeout := flag.Duration("timeout", 2*time.Minute, "stop after this long, closing included")
	work := flag.Duration("work", 0, "time each event's handling takes (a call to a billing service)")
	flag.Parse()
	if err := linked.Check(*url, "./examples/orders"); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(2)
	}
	if *orders <= 0 || *timeout <= 0 || *work < 0 {
		fmt.Fprintln(os.Stderr, "orders: -orders and -timeout must be positive, -work not negative")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	// run returns before the deadline; should closing a broker hang
	// anyway, -timeout still holds.
	watchdog := time.AfterFunc(*timeout, func() {
		fmt.Fprintf(os.Stderr, "orders: -timeout %v reached while closing the broker\n", *timeout)
		os.Exit(1)
	})
	defer watchdog.Stop()
	cfg := config{
		url:    *url,
		topic:  "orders-" + strconv.FormatInt(time.Now().UnixNano(), 36), // fresh per run
		orders: *orders,
		work:   *work,
	}
	if err := run(ctx, cfg, os.Stdout); err != nil {
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
