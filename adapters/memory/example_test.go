package memory_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
)

// Publish three messages on mem:// and consume them at-least-once.
func Example() {
	ctx := context.Background()
	b, err := broker.Open(ctx, "mem://example")
	if err != nil {
		panic(err)
	}
	defer b.Close(ctx)

	// Subscribe first: a group receives what is published after it exists.
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	pub, _ := b.NewPublisher(ctx)
	for _, body := range []string{"created", "paid", "shipped"} {
		if err := pub.Publish(ctx, "orders", &broker.Message{Key: "order-1", Payload: []byte(body)}); err != nil {
			panic(err)
		}
	}

	cctx, stop := context.WithCancel(ctx)
	handled := 0
	err = broker.Consume(cctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("%s %s (attempt %d)\n", m.Key, m.Payload, m.Attempt)
		if handled++; handled == 3 {
			stop()
		}
		return nil
	}), broker.ConsumeOptions{})
	fmt.Println("consume:", err)
	// Output:
	// order-1 created (attempt 1)
	// order-1 paid (attempt 1)
	// order-1 shipped (attempt 1)
	// consume: <nil>
}

// A failed handler makes the message come back, with a growing Attempt,
// until it succeeds or, with MaxAttempts, goes to the dead-letter topic.
func ExampleNew() {
	ctx := context.Background()
	b := broker.New(memory.New(memory.Options{AckTimeout: 5 * time.Second}))
	defer b.Close(ctx)
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "jobs", MaxAttempts: 2})
	dlq, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "jobs.dlq"})
	pub, _ := b.NewPublisher(ctx)
	pub.Publish(ctx, "jobs", &broker.Message{ID: "job-7", Payload: []byte("resize image")})

	cctx, stop := context.WithCancel(ctx)
	go func() {
		d, _ := dlq.Receive(ctx)
		m := d.Message()
		fmt.Printf("dead letter %s after %s attempts: %s\n", m.ID, m.Header(broker.HeaderDeadAttempts), m.Header(broker.HeaderDeadReason))
		d.Ack(ctx)
		stop()
	}()
	broker.Consume(cctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("%s attempt %d\n", m.ID, m.Attempt)
		return errors.New("image service down")
	}), broker.ConsumeOptions{OnError: func(*broker.Message, error) {}})
	// Output:
	// job-7 attempt 1
	// job-7 attempt 2
	// dead letter job-7 after 2 attempts: nacked on attempt 2 (MaxAttempts 2)
}

// Depth reports what a group holds, for metrics and lag.
func ExampleBroker_Depth() {
	ctx := context.Background()
	mb := memory.New(memory.Options{})
	b := broker.New(mb)
	defer b.Close(ctx)
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "t", Group: "g"})
	pub, _ := b.NewPublisher(ctx)
	for i := range 3 {
		pub.Publish(ctx, "t", &broker.Message{Payload: []byte{byte(i)}})
	}
	d, _ := sub.Receive(ctx)
	d.Nack(ctx, time.Minute)
	d, _ = sub.Receive(ctx)

	st, _ := mb.Depth("t", "g")
	fmt.Printf("ready %d, in flight %d, delayed %d, depth %d\n", st.Ready, st.InFlight, st.Delayed, st.Depth())
	// Output:
	// ready 1, in flight 1, delayed 1, depth 3
}
