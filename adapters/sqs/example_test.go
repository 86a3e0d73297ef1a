package sqs_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
)

// Open by URL, publish, and consume at-least-once. With fanout=true every
// group gets every message; fifo=true keeps each key's order.
func Example() {
	ctx := context.Background()
	b, err := broker.Open(ctx, "sqs://?region=eu-west-1&fanout=true&fifo=true")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)

	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing", MaxAttempts: 5})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)

	pub, err := b.NewPublisher(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(ctx)
	if err := pub.Publish(ctx, "orders", &broker.Message{Key: "order-42", Payload: []byte(`{"total":12.5}`)}); err != nil {
		log.Fatal(err)
	}

	err = broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("%s attempt %d: %s\n", m.Key, m.Attempt, m.Payload)
		return nil
	}), broker.ConsumeOptions{Concurrency: 8})
	if err != nil {
		log.Fatal(err)
	}
}

// New takes SDK clients configured by the caller.
func ExampleNew() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		log.Fatal(err)
	}
	qb, err := qsqs.New(awssqs.NewFromConfig(cfg), qsqs.Options{
		SNS:               sns.NewFromConfig(cfg), // fan-out; leave nil for plain queues
		VisibilityTimeout: time.Minute,
	})
	if err != nil {
		log.Fatal(err)
	}
	b := broker.New(qb)
	defer b.Close(ctx)
	fmt.Println(b.Capabilities().FanOut)
}

// Dead letters go back to their queue with their body, ID, key and headers
// (a new queuekit-published-at, and queuekit-redrives counting the
// redrives, as with `queuekit redrive`); the result says what is left in
// the dead-letter queue, and the backlog how far behind consumers are.
func ExampleBroker_Redrive() {
	ctx := context.Background()
	bb, err := broker.Open(ctx, "sqs://?region=eu-west-1")
	if err != nil {
		log.Fatal(err)
	}
	defer bb.Close(ctx)
	var b *qsqs.Broker
	bb.As(&b)
	opts := broker.SubscriberOptions{Topic: "orders", MaxAttempts: 5}
	res, err := b.Redrive(ctx, b.DeadLetterQueue(opts), b.SubscriptionQueue("orders", ""), qsqs.RedriveOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if !res.Done() {
		fmt.Println(res.Left.InFlight, "dead letters in flight: run again when they are visible")
	}
	lag, err := bb.Backlog(ctx, "orders", "default")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Moved, "moved back;", lag.Pending, "waiting,", lag.InFlight, "in flight")
}

// How queuekit names map to SQS queues and SNS topics.
func ExampleGroupQueueName() {
	fmt.Println(qsqs.QueueName("orders.dlq", false))
	fmt.Println(qsqs.TopicName("orders", true))
	fmt.Println(qsqs.GroupQueueName("orders", "billing", true))
	// Output:
	// orders_dlq
	// orders.fifo
	// orders-billing.fifo
}
