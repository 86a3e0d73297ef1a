// Command atmostonce shows the at-most-once guarantee: each delivery is
// acknowledged before its handler runs, so a handler that fails loses its
// message — and no message is ever handled twice. It suits data where a gap
// is cheaper than a duplicate (telemetry samples, cache invalidations).
//
// The guarantee is declared once, when subscribing
// (SubscriberOptions.Guarantee): the adapter configures the broker for it
// (an ack that returns only once the broker recorded it) or refuses with an
// Unsupported error that names the setting that would work; it never runs
// weaker than asked.
//
//	go run ./examples/atmostonce                      # embedded broker
//	go run -tags allbrokers ./examples/atmostonce -broker amqp://guest:guest@127.0.0.1:5672/
//
// It links only mem:// unless built with -tags allbrokers. It exits
// non-zero if any message was handled twice.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory" // mem://; the others with -tags allbrokers (brokers.go)
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/examples/internal/linked"
	"github.com/queuekit/queuekit/semantics"
)

func main() {
	url := flag.String("broker", envOr("QUEUEKIT_BROKER", "mem://"), "broker URL")
	n := flag.Int("n", 1000, "samples to publish")
	flag.Parse()
	if err := linked.Check(*url, "./examples/atmostonce"); err != nil {
		fmt.Fprintln(os.Stderr, "atmostonce:", err)
		os.Exit(2)
	}
	if err := run(*url, *n); err != nil {
		fmt.Fprintln(os.Stderr, "atmostonce:", err)
		os.Exit(1)
	}
}

func run(url string, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := broker.Open(ctx, url)
	if err != nil {
		return err
	}
	defer b.Close(context.Background())

	topic := "telemetry-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// Subscribing first declares the group (a publish to a topic without
	// one fails with broker.ErrNoGroup), with its guarantee.
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "dashboard", Guarantee: semantics.AtMostOnce})
	if err != nil {
		return err
	}
	defer sub.Close(context.Background())
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	defer pub.Close(context.Background())

	ledger := conformance.NewLedger()
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Key: "sensor-" + strconv.Itoa(i%10), Payload: []byte(strconv.Itoa(i))}
	}
	if err := pub.Publish(ctx, topic, msgs...); err != nil {
		return err
	}
	for _, m := range msgs {
		ledger.Published(m.ID, m.Key)
	}

	// Every 10th sample fails in its handler: under at-most-once it is
	// already acknowledged, so it is gone — by design.
	errFlaky := errors.New("dashboard unavailable")
	var failed, seen atomic.Int64
	done := make(chan struct{})
	consumeCtx, stop := context.WithCancel(ctx)
	handler := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		ledger.Delivered(m.ID)
		i, _ := strconv.Atoi(string(m.Payload))
		if ledger.DeliveredCount(m.ID) == 1 && seen.Add(1) == int64(n) {
			defer close(done)
		}
		if i%10 == 0 {
			failed.Add(1)
			return errFlaky
		}
		ledger.Handled(m.ID)
		return nil
	})
	consumed := make(chan error, 1)
	go func() {
		consumed <- broker.Consume(consumeCtx, sub, handler, broker.ConsumeOptions{
			OnError: func(m *broker.Message, err error) {
				if !errors.Is(err, errFlaky) { // the injected failures are counted below
					fmt.Fprintf(os.Stderr, "atmostonce: %s: %v\n", m.ID, err)
				}
			},
		})
	}()
	select {
	case <-done:
	case <-ctx.Done():
		stop()
		return fmt.Errorf("timed out waiting for deliveries: %v", ledger.Report())
	}
	stop()
	if err := <-consumed; err != nil {
		return err
	}

	r := ledger.Report()
	fmt.Printf("published   %d\n", r.Published)
	fmt.Printf("handled     %d\n", r.Handled)
	fmt.Printf("lost        %d (handler failed after the ack: at-most-once never retries)\n", len(r.Lost))
	fmt.Printf("duplicates  %d (must be 0)\n", r.Duplicates)
	if r.Duplicates != 0 || int64(len(r.Lost)) != failed.Load() {
		return fmt.Errorf("ledger disagrees: %v (expected %d lost)", r, failed.Load())
	}
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
