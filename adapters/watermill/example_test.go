package watermill_test

import (
	"context"
	"errors"
	"fmt"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/broker"
)

// Queuekit's Consume on a Watermill GoChannel.
func ExampleNewGoChannel() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := broker.New(watermill.NewGoChannel(gochannel.NewGoChannel(gochannel.Config{}, wm.NopLogger{})))
	defer b.Close(context.Background())

	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	defer sub.Close(context.Background())
	pub, _ := b.NewPublisher(ctx)
	_ = pub.Publish(ctx, "orders", &broker.Message{ID: "order-1", Key: "customer-7", Payload: []byte("2 books")})

	_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		fmt.Printf("%s %s: %s\n", m.ID, m.Key, m.Payload)
		cancel()
		return nil
	}), broker.ConsumeOptions{})
	// Output: order-1 customer-7: 2 books
}

// A Watermill Router handler consuming from queuekit's mem:// broker.
func ExampleNewSubscriber() {
	ctx := context.Background()
	b := broker.New(memory.New(memory.Options{}))
	defer b.Close(ctx)

	router, _ := message.NewRouter(message.RouterConfig{}, wm.NopLogger{})
	done := make(chan struct{})
	router.AddConsumerHandler("print", "orders",
		watermill.NewSubscriber(b, watermill.SubscriberConfig{Subscription: broker.SubscriberOptions{Group: "billing"}}),
		func(msg *message.Message) error {
			fmt.Printf("%s %s: %s\n", msg.UUID, msg.Metadata.Get(watermill.MetadataKey), msg.Payload)
			close(done)
			return nil
		})
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	pub, _ := b.NewPublisher(ctx)
	_ = pub.Publish(ctx, "orders", &broker.Message{ID: "order-1", Key: "customer-7", Payload: []byte("2 books")})
	<-done
	_ = router.Close()
	// Output: order-1 customer-7: 2 books
}

// Groups declared before publishing keep what is published for their
// subscribers to come; a topic without a group is refused.
func Example_declare() {
	ctx := context.Background()
	b := broker.New(watermill.NewGoChannel(gochannel.NewGoChannel(gochannel.Config{}, wm.NopLogger{})))
	defer b.Close(ctx)

	pub, _ := b.NewPublisher(ctx)
	err := pub.Publish(ctx, "orders", &broker.Message{ID: "order-0"})
	fmt.Println("before Declare:", errors.Is(err, broker.ErrNoGroup))

	_ = b.Declare(ctx, "orders", "billing")
	_ = pub.Publish(ctx, "orders", &broker.Message{ID: "order-1", Payload: []byte("2 books")})

	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	d, _ := sub.Receive(ctx)
	_ = d.Ack(ctx)
	fmt.Printf("billing got %s: %s\n", d.Message().ID, d.Message().Payload)
	// Output:
	// before Declare: true
	// billing got order-1: 2 books
}
