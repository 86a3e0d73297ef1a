package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// A batch handler writes up to MaxBatch messages in one call and reports a
// result per message: here the invalid one is nacked and comes back alone,
// the others are acked.
func ExampleConsumeBatch() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := broker.Open(ctx, "mem://batch-example")
	if err != nil {
		panic(err)
	}
	defer b.Close(context.Background())
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "payments"})
	pub, _ := b.NewPublisher(ctx)
	for _, id := range []string{"p1", "p2", "p3"} {
		_ = pub.Publish(ctx, "payments", &broker.Message{ID: id, Payload: []byte(id)})
	}

	h := broker.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) []error {
		res := make([]error, len(msgs)) // one INSERT ... VALUES (...), (...) for the lot
		var seen []string
		for i, m := range msgs {
			seen = append(seen, fmt.Sprintf("%s (attempt %d)", m.ID, m.Attempt))
			if m.ID == "p2" && m.Attempt == 1 {
				res[i] = errors.New("p2 is not valid yet")
			}
		}
		fmt.Println(strings.Join(seen, ", "))
		if len(msgs) == 1 {
			cancel() // p2 came back: stop
		}
		return res
	})
	err = broker.ConsumeBatch(ctx, sub, h, broker.BatchOptions{
		MaxBatch: 3,
		MaxWait:  50 * time.Millisecond, // wait for a full batch, at most this long
		ConsumeOptions: broker.ConsumeOptions{
			OnError: func(m *broker.Message, err error) { fmt.Println("nacked:", err) },
		},
	})
	fmt.Println("consume returned", err)
	// Output:
	// p1 (attempt 1), p2 (attempt 1), p3 (attempt 1)
	// nacked: p2 is not valid yet
	// p2 (attempt 2)
	// consume returned <nil>
}
