package redisstreams_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/adapters/redisstreams"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Open a broker from a URL (the scheme registered by importing the
// package), declare the topic's group, publish, and consume at least once.
func Example() {
	ctx := context.Background()
	b, err := broker.Open(ctx, "redis+streams://127.0.0.1:6379/0?ack_timeout=10s")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)
	if err := b.Declare(ctx, "orders", "billing"); err != nil { // publishing needs a group
		log.Fatal(err)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := pub.Publish(ctx, "orders", &broker.Message{Key: "order-1", Payload: []byte(`{"total":42}`)}); err != nil {
		log.Fatal(err)
	}
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing", MaxAttempts: 5})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("%s attempt %d: %s\n", m.Key, m.Attempt, m.Payload)
		return nil // acked; an error nacks, and the 5th failure dead-letters to orders.dlq
	}), broker.ConsumeOptions{Concurrency: 8})
}

// New takes a go-redis client configured by the application (here a
// cluster client); the broker keeps the client's lifetime to the caller.
// PerKey ordering spreads a topic over shards leased to one subscriber
// each.
func ExampleNew() {
	ctx := context.Background()
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"10.0.0.1:6379", "10.0.0.2:6379"}})
	defer client.Close()
	rb, err := redisstreams.New(client, redisstreams.Options{Prefix: "app:", Shards: 8, AckTimeout: 30 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	b := broker.New(rb)
	defer b.Close(ctx)
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "payments", Group: "ledger", Ordering: semantics.PerKey})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)
	_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return nil // one key's messages run one at a time, in publish order
	}), broker.ConsumeOptions{Concurrency: 16})
}

// Under at-most-once, Consume acks before the handler runs and each Ack
// returns only once Redis removed the entry from the group's pending list:
// a crash after it never makes the group handle the message again.
func ExampleBroker_atMostOnce() {
	ctx := context.Background()
	b, err := broker.Open(ctx, "redis+streams://127.0.0.1:6379")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "metrics", Group: "sampler", Guarantee: semantics.AtMostOnce})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)
	var rb *redisstreams.Broker
	if b.As(&rb) {
		bl, _ := rb.Backlog(ctx, "metrics", "sampler")
		fmt.Println("pending", bl.Pending, "in flight", bl.InFlight)
	}
}
