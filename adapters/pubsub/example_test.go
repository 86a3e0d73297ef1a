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
)

// Open a broker by URL (here against an in-process pstest server), publish
// with a key and consume at-least-once as group "billing".
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
	// The group's subscription must exist before publishing: Pub/Sub
	// delivers to the subscriptions a topic has when a message arrives.
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(ctx)
	if err := pub.Publish(ctx, "orders", &broker.Message{Key: "order-1", Payload: []byte("paid")}); err != nil {
		log.Fatal(err)
	}

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

// New wraps a *pubsub.Client configured by the application; the adapter
// creates topics and subscriptions (here one with a dead-letter policy)
// through it.
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
