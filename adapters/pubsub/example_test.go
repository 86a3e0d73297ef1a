package pubsub_test

import (
	"context"
	"fmt"
	"log"
	"time"

	ps "cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	qpubsub "github.com/queuekit/queuekit/adapters/pubsub"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Open a broker by URL (here against an in-process pstest server), declare
// group "billing" on topic "orders", publish with a key and consume
// at-least-once.
func Example() {
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	b, err := broker.Open(ctx, "gcppubsub://my-project?emulator="+srv.Addr)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)
	// Pub/Sub delivers to the subscriptions a topic has when a message
	// arrives: declare the group's first (a Publish to a topic without
	// one is refused with broker.ErrNoGroup).
	if err := b.Declare(ctx, "orders", "billing"); err != nil {
		log.Fatal(err)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(ctx)
	if err := pub.Publish(ctx, "orders", &broker.Message{Key: "order-1", Payload: []byte("paid")}); err != nil {
		log.Fatal(err)
	}
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)

	cctx, stop := context.WithCancel(ctx)
	handler := broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		fmt.Printf("%s %s attempt %d\n", m.Key, m.Payload, m.Attempt)
		stop()
		return nil // acked
	})
	if err := broker.Consume(cctx, sub, handler, broker.ConsumeOptions{}); err != nil {
		log.Fatal(err)
	}
	// Output: order-1 paid attempt 1
}

// New makes a driver over a *pubsub.Client configured by the application
// (broker.New wraps it for applications); its admin methods create topics
// and subscriptions, here one with a dead-letter policy.
func ExampleNew() {
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	defer srv.Close()
	ctx := context.Background()
	client, err := ps.NewClient(ctx, "my-project",
		option.WithEndpoint(srv.Addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close() // New does not take ownership of the client

	b, err := qpubsub.New(client, qpubsub.Options{ExactlyOnce: true})
	if err != nil {
		log.Fatal(err)
	}
	sub, err := b.EnsureSubscription(ctx, qpubsub.SubscriptionConfig{
		Name:                "payments-ledger",
		Topic:               "payments",
		DeadLetterTopic:     "payments.dlq",
		MaxDeliveryAttempts: 5,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sub.Name)
	fmt.Println(sub.DeadLetterPolicy.DeadLetterTopic, sub.DeadLetterPolicy.MaxDeliveryAttempts)
	// Output:
	// projects/my-project/subscriptions/payments-ledger
	// projects/my-project/topics/payments.dlq 5
}

// A subscriber declared AtMostOnce acks each message before its handler
// runs, and that ack must be recorded before the handler starts: the
// adapter turns on exactly-once delivery on the group's subscription, so
// Ack returns once Pub/Sub has confirmed it.
func ExampleBroker_NewSubscriber_atMostOnce() {
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := broker.Open(ctx, "gcppubsub://my-project?emulator="+srv.Addr)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)

	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "alerts", Group: "pager", Guarantee: semantics.AtMostOnce})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)
	var d *qpubsub.Broker
	b.As(&d)
	cfg, err := d.EnsureSubscription(ctx, qpubsub.SubscriptionConfig{Name: qpubsub.DefaultSubscriptionName("alerts", "pager"), Topic: "alerts"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exactly-once delivery:", cfg.EnableExactlyOnceDelivery)
	// Output: exactly-once delivery: true
}
