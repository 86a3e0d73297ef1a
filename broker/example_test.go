package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"

	_ "github.com/queuekit/queuekit/adapters/memory" // registers mem://
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Publish with a key and headers, then consume at-least-once: a handler
// error nacks the message and it comes back with the next attempt number.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := broker.Open(ctx, "mem://example")
	if err != nil {
		panic(err)
	}
	defer b.Close(context.Background())

	// The group is declared by the subscriber, before the first publish;
	// the guarantee is declared with it, once.
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{
		Topic: "orders", Group: "billing", Guarantee: semantics.AtLeastOnce,
	})
	defer sub.Close(context.Background())
	pub, _ := b.NewPublisher(ctx)
	defer pub.Close(context.Background())

	err = pub.Publish(ctx, "orders", &broker.Message{
		ID:      "order-42-created",
		Key:     "order-42",
		Payload: []byte(`{"total":12.5}`),
		Headers: map[string]string{"type": "order.created"},
	})
	if err != nil {
		panic(err)
	}

	var once sync.Once
	h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("attempt %d: %s %s %s\n", m.Attempt, m.ID, m.Header("type"), m.Payload)
		if m.Attempt == 1 {
			return errors.New("billing service unavailable") // nacked, redelivered
		}
		once.Do(cancel) // handled: stop consuming
		return nil
	})
	err = broker.Consume(ctx, sub, h, broker.ConsumeOptions{
		OnError: func(m *broker.Message, err error) { fmt.Println("nacked:", err) },
	})
	fmt.Println("consume returned", err)
	// Output:
	// attempt 1: order-42-created order.created {"total":12.5}
	// nacked: billing service unavailable
	// attempt 2: order-42-created order.created {"total":12.5}
	// consume returned <nil>
}

// Open rejects what it cannot use with an error that says what would work,
// and never shows a password.
func ExampleOpen_errors() {
	_, err := broker.Open(context.Background(), "mem://?bufer=10")
	fmt.Println(err)
	_, err = broker.Open(context.Background(), "nats://user:secret@localhost:4222")
	fmt.Println(broker.KindOf(err))
	// Output:
	// mem: open: unknown URL parameter(s) bufer (valid: ack_timeout, buffer, max_size, pace)
	// invalid argument
}
