package rabbitmq_test

import (
	"context"
	"fmt"
	"log"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Open a RabbitMQ broker by URL, publish with confirms, and consume
// at-least-once with a dead-letter queue after 5 attempts.
func Example() {
	ctx := context.Background()
	b, err := broker.Open(ctx, "amqp://guest:guest@127.0.0.1:5672/?prefetch=64")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)

	// The group's queue must exist before publishing: a message no queue
	// is bound for is refused (kind NotFound), not dropped.
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{
		Topic: "orders", Group: "billing", MaxAttempts: 5,
		Ordering: semantics.PerKey, // single active consumer, dispatched per key
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)

	pub, err := b.NewPublisher(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(ctx)
	if err := pub.Publish(ctx, "orders", &broker.Message{Key: "order-1", Payload: []byte(`{"total":42}`)}); err != nil {
		log.Fatal(err) // a *broker.PublishError names the messages not confirmed
	}

	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("order %s, attempt %d\n", m.Key, m.Attempt)
		return nil // a failure would be retried, then dead-lettered to orders.dlq
	}), broker.ConsumeOptions{Concurrency: 8})
	if err != nil {
		log.Fatal(err)
	}
}

// New wraps a connection the application made itself; Redial lets the
// broker reconnect when it drops.
func ExampleNew() {
	url := "amqp://guest:guest@127.0.0.1:5672/"
	conn, err := amqp.Dial(url)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	b, err := rabbitmq.New(conn, rabbitmq.Options{
		QueueType: rabbitmq.Quorum,
		Prefetch:  32,
		Redial:    func(context.Context) (*amqp.Connection, error) { return amqp.Dial(url) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(context.Background())
	fmt.Println(b.Capabilities().NativeDeadLetter)
}

// Inspect gives a group's backlog and consumer count, for metrics and lag.
func ExampleBroker_Inspect() {
	ctx := context.Background()
	b, err := rabbitmq.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/", rabbitmq.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)
	info, err := b.Inspect(ctx, "orders", "billing")
	if err != nil {
		log.Fatal(err) // kind NotFound when the group has no queue
	}
	fmt.Printf("%s: %d ready, %d consumers\n", info.Queue, info.Messages, info.Consumers)
}

// DeadLetterQueues finds where RabbitMQ dead-lettered a topic's messages
// natively, whichever process declared the groups; consuming such a queue
// as its group, on the dead-letter topic, gets the dead letters (the
// queuekit command's redrive does that).
func ExampleBroker_DeadLetterQueues() {
	ctx := context.Background()
	rb, err := rabbitmq.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/", rabbitmq.Options{})
	if err != nil {
		log.Fatal(err)
	}
	b := broker.New(rb)
	defer b.Close(ctx)
	queues, err := rb.DeadLetterQueues(ctx, "orders")
	if err != nil {
		log.Fatal(err)
	}
	for _, q := range queues {
		fmt.Printf("%s: %d dead letters of group %s\n", q.Queue, q.Messages, q.Group)
		sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: q.Topic, Group: q.Group})
		if err != nil {
			log.Fatal(err)
		}
		_ = sub // hand it to dlq.Redrive with a publisher
	}
}

// DeleteTopic deletes every queue declared for a topic, by any process:
// what tests and one-off runs use to leave nothing behind.
func ExampleBroker_DeleteTopic() {
	ctx := context.Background()
	rb, err := rabbitmq.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/", rabbitmq.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer rb.Close(ctx)
	for _, topic := range []string{"orders", "orders.dlq"} {
		if err := rb.DeleteTopic(ctx, topic); err != nil {
			log.Fatal(err)
		}
	}
}
