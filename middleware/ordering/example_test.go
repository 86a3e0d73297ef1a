package ordering_test

import (
	"context"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/ordering"
)

func ExampleRun() {
	ctx, stop := context.WithCancel(context.Background())
	b := memory.New(memory.Options{})
	defer b.Close(context.Background())
	pub, _ := b.NewPublisher(ctx)
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders"})
	_ = pub.Publish(ctx, "orders",
		&broker.Message{ID: "created", Key: "order-7"},
		&broker.Message{ID: "paid", Key: "order-7"},
		&broker.Message{ID: "shipped", Key: "order-7"})

	seen := make(chan string, 3)
	done := make(chan error)
	go func() {
		done <- ordering.Run(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			seen <- m.ID
			return nil
		}), ordering.Options{Workers: 8}, 5*time.Second)
	}()
	for range 3 {
		fmt.Println(<-seen)
	}
	stop()
	fmt.Println(<-done)
	// Output:
	// created
	// paid
	// shipped
	// <nil>
}
