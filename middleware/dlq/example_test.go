package dlq_test

import (
	"context"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dlq"
)

func ExampleRedrive() {
	ctx := context.Background()
	b := broker.New(memory.New(memory.Options{}))
	defer b.Close(ctx)
	pub, _ := b.NewPublisher(ctx)
	dead, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders.dlq", Group: "ops"})
	orders, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})

	// Two dead letters, as the dlq middleware writes them.
	for _, id := range []string{"order-1", "order-2"} {
		_ = pub.Publish(ctx, "orders.dlq", &broker.Message{ID: id, Key: id, Headers: map[string]string{
			broker.HeaderOriginalTopic: "orders", broker.HeaderDeadReason: "database down", "tenant": "acme"}})
	}

	p, err := dlq.Redrive(ctx, dead, pub, dlq.RedriveOptions{Idle: 100 * time.Millisecond})
	fmt.Println("moved", p.Moved, err)
	d, _ := orders.Receive(ctx)
	m := d.Message()
	fmt.Println(m.ID, m.Header("tenant"), m.Header(dlq.HeaderRedrives), m.Header(broker.HeaderDeadReason) == "")
	// Output:
	// moved 2 <nil>
	// order-1 acme 1 true
}
