package nats_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	natsadapter "github.com/queuekit/queuekit/adapters/nats"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Open NATS JetStream by URL, declare the topic and its group before
// publishing (a topic without a group refuses Publish with ErrNoGroup),
// and consume at-least-once with per-key order and dead letters after 5
// attempts. (Not run by go test: it needs a server.)
func Example() {
	ctx := context.Background()
	b, err := broker.Open(ctx, "nats://127.0.0.1:4222?ack_wait=30s")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)

	// Stream "orders" captures subject orders; group billing is a durable
	// consumer of it.
	if err := b.Declare(ctx, "orders", "billing"); err != nil {
		log.Fatal(err)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(ctx)
	// Publish returns once JetStream stored the message.
	if err := pub.Publish(ctx, "orders", &broker.Message{Key: "order-1", Payload: []byte(`{"total":42}`)}); err != nil {
		log.Fatal(err)
	}

	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{
		Topic: "orders", Group: "billing", MaxAttempts: 5,
		Ordering: semantics.PerKey, // the group keeps one message in flight
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("order %s, attempt %d\n", m.Key, m.Attempt)
		return nil // an error is retried, then dead-lettered to orders.dlq
	}), broker.ConsumeOptions{Concurrency: 8})
	if err != nil {
		log.Fatal(err)
	}
}

// New wraps a connection the application made itself — here with a
// credentials file and its own reconnect policy. Close leaves it open.
func ExampleNew() {
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.UserCredentials("app.creds"), nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	nb, err := natsadapter.New(nc, natsadapter.Options{AckWait: time.Minute, Retention: natsadapter.Interest})
	if err != nil {
		log.Fatal(err)
	}
	b := broker.New(nb)
	defer b.Close(context.Background())

	// The JetStream context underneath, for what queuekit does not cover.
	var js jetstream.JetStream
	if b.As(&js) {
		if info, err := js.AccountInfo(context.Background()); err == nil {
			fmt.Println("streams:", info.Streams)
		}
	}
}

// At-most-once: Consume acks before the handler runs, and the adapter's
// Ack returns only once the server confirmed it within the ack wait, so a
// message whose handler ran is never delivered again.
func Example_atMostOnce() {
	ctx := context.Background()
	b, err := broker.Open(ctx, "nats://127.0.0.1:4222")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "metrics", Group: "dashboard", Guarantee: semantics.AtMostOnce})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)
	_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return nil // not retried: an error loses the message, as at-most-once allows
	}), broker.ConsumeOptions{Concurrency: 4})
}
