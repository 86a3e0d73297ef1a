package kafka_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/adapters/kafka"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// fakeKafka starts an in-process Kafka-protocol broker for the examples;
// point the URLs at your own cluster instead.
func fakeKafka() (addr string, stop func()) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		panic(err)
	}
	return strings.Join(c.ListenAddrs(), ","), c.Close
}

// Open a Kafka cluster by URL, subscribe with per-key ordering, publish
// keyed messages, and consume them in a consumer group at-least-once.
func Example() {
	addr, stop := fakeKafka()
	defer stop()
	ctx := context.Background()

	b, err := broker.Open(ctx, "kafka://"+addr+"/?partitions=3&group=billing")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close(ctx)

	// Subscribing declares the group: what is published from now on
	// reaches it (publishing to a topic without a group is refused).
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Ordering: semantics.PerKey})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close(ctx)

	pub, _ := b.NewPublisher(ctx)
	err = pub.Publish(ctx, "orders",
		&broker.Message{Key: "order-1", Payload: []byte("created")},
		&broker.Message{Key: "order-1", Payload: []byte("paid")},
	)
	if err != nil {
		fmt.Println(err)
		return
	}

	cctx, cancel := context.WithCancel(ctx)
	var handled atomic.Int32
	_ = broker.Consume(cctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		fmt.Println(m.Key, string(m.Payload), "attempt", m.Attempt)
		if handled.Add(1) == 2 {
			cancel()
		}
		return nil
	}), broker.ConsumeOptions{Concurrency: 4}) // one key's messages in order
	// Output:
	// order-1 created attempt 1
	// order-1 paid attempt 1
}

// New takes Options and franz-go options; here a client ID and the
// retry-topic Nack strategy. broker.New wraps the adapter in the API every
// broker shares, and As gets it (or its franz-go client) back.
func ExampleNew() {
	addr, stop := fakeKafka()
	defer stop()
	ctx := context.Background()

	kb, err := kafka.New(ctx, kafka.Options{
		Brokers:       strings.Split(addr, ","),
		ClientOptions: []kgo.Opt{kgo.ClientID("billing-service")},
		Nack:          kafka.NackRetryTopic,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	b := broker.New(kb)
	defer b.Close(ctx)

	var cl *kgo.Client
	fmt.Println(b.Capabilities().DeadLetter, b.Capabilities().MaxMessageSize, b.As(&cl) && cl == kb.Client())
	// Output: true 1000000 true
}

// An at-most-once subscriber: declared so, it commits each ack before
// Consume runs the handler, so a crash never makes it handle a message
// twice (it may lose the one in hand).
func ExampleBroker_NewSubscriber_atMostOnce() {
	addr, stop := fakeKafka()
	defer stop()
	ctx := context.Background()
	b, err := broker.Open(ctx, "kafka://"+addr+"/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close(ctx)

	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "alerts", Group: "pager", Guarantee: semantics.AtMostOnce})
	if err != nil {
		fmt.Println(err)
		return
	}
	pub, _ := b.NewPublisher(ctx)
	_ = pub.Publish(ctx, "alerts", &broker.Message{Payload: []byte("disk full")})

	cctx, cancel := context.WithCancel(ctx)
	_ = broker.Consume(cctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		fmt.Println("page:", string(m.Payload))
		cancel()
		return nil
	}), broker.ConsumeOptions{})
	// Output: page: disk full
}

// Partition tells where a key goes: the same partition the Java client,
// kafkajs and librdkafka's murmur2_random put it on.
func ExamplePartition() {
	fmt.Println(kafka.Partition("order-42", 12), kafka.Partition("customer-7", 12))
	// Output: 0 7
}

// A Processor copies a topic to another one, transformed, exactly once: the
// outputs and the input offsets commit in one Kafka transaction.
func ExampleBroker_NewProcessor() {
	addr, stop := fakeKafka()
	defer stop()
	ctx := context.Background()
	kb, err := kafka.New(ctx, kafka.Options{Brokers: strings.Split(addr, ",")})
	if err != nil {
		fmt.Println(err)
		return
	}
	b := broker.New(kb)
	defer b.Close(ctx)
	_ = b.Declare(ctx, "words", "shout") // the processor's group
	_ = b.Declare(ctx, "shouts", "default")
	pub, _ := b.NewPublisher(ctx)
	_ = pub.Publish(ctx, "words", &broker.Message{ID: "w1", Payload: []byte("hello")})

	p, err := kb.NewProcessor(ctx, kafka.ProcessorOptions{Topic: "words", Group: "shout", TransactionalID: "shout-1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close(context.Background())
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	go p.Run(rctx, func(_ context.Context, in *broker.Message) ([]*broker.Message, error) {
		return []*broker.Message{{ID: in.ID, Topic: "shouts", Payload: []byte(strings.ToUpper(string(in.Payload)))}}, nil
	})

	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "shouts"}) // read_committed
	defer sub.Close(ctx)
	d, err := sub.Receive(rctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(d.Message().ID, string(d.Message().Payload))
	_ = d.Ack(ctx)
	// Output: w1 HELLO
}

// Lag reports how far a group is behind, per partition; a group that never
// committed lags by the whole log.
func ExampleBroker_Lag() {
	addr, stop := fakeKafka()
	defer stop()
	ctx := context.Background()
	kb, err := kafka.New(ctx, kafka.Options{Brokers: strings.Split(addr, ","), Partitions: 2})
	if err != nil {
		fmt.Println(err)
		return
	}
	b := broker.New(kb)
	defer b.Close(ctx)
	_ = b.Declare(ctx, "events", "audit")
	pub, _ := b.NewPublisher(ctx)
	_ = pub.Publish(ctx, "events", &broker.Message{Key: "a"}, &broker.Message{Key: "a"}, &broker.Message{Key: "b"})

	lags, err := kb.Lag(ctx, "events", "reporting")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, l := range lags {
		fmt.Printf("partition %d: end %d, committed %d, lag %d\n", l.Partition, l.End, l.Committed, l.Lag)
	}
	// Output:
	// partition 0: end 3, committed -1, lag 3
	// partition 1: end 0, committed -1, lag 0
}
