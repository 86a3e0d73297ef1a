package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dlq"
	qkrecover "github.com/queuekit/queuekit/middleware/recover"
	"github.com/queuekit/queuekit/middleware/retry"
)

// The default stack over the embedded broker: a duplicate is suppressed and
// a poison message ends in the dead-letter topic after 3 attempts.
func ExampleDefault() {
	ctx := context.Background()
	b := broker.New(memory.New(memory.Options{}))
	defer b.Close(ctx)
	pub, _ := b.NewPublisher(ctx)
	dead, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders.dlq", Group: "ops"})
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})

	var stats dedupe.Stats
	handled := make(chan string, 4)
	h := middleware.Default(middleware.Options{
		Publisher:   pub, // dead letters go to "<topic>.dlq"
		Store:       dedupe.NewMemoryStore(dedupe.MemoryOptions{}),
		MaxAttempts: 3,
		Retry:       &retry.Options{Mode: retry.Redelivery, MaxAttempts: 3, Initial: time.Millisecond},
		Dedupe:      dedupe.Options{Stats: &stats},
	})(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if string(m.Payload) == "poison" {
			return errors.New("malformed order")
		}
		handled <- m.ID
		return nil
	}))

	_ = pub.Publish(ctx, "orders",
		&broker.Message{ID: "order-1", Payload: []byte("ok")},
		&broker.Message{ID: "order-1", Payload: []byte("ok")}, // published twice
		&broker.Message{ID: "order-2", Payload: []byte("poison")})
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	go broker.Consume(cctx, sub, h, broker.ConsumeOptions{OnError: func(*broker.Message, error) {}})

	fmt.Println("handled:", <-handled)
	d, _ := dead.Receive(ctx)
	fmt.Println("dead-lettered:", d.Message().ID, "after", d.Message().Header(broker.HeaderDeadAttempts), "attempts")
	fmt.Println("duplicates suppressed:", stats.Snapshot().Duplicates)
	fmt.Println("order check:", middleware.Check(h))
	// Output:
	// handled: order-1
	// dead-lettered: order-2 after 3 attempts
	// duplicates suppressed: 1
	// order check: <nil>
}

// Check finds orderings that break a guarantee.
func ExampleCheck() {
	ctx := context.Background()
	pub, _ := memory.New(memory.Options{}).NewPublisher(ctx)
	noop := broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	good := middleware.Default(middleware.Options{Publisher: pub})(noop)
	fmt.Println(middleware.Stages(good), middleware.Check(good))

	bad := broker.Chain(qkrecover.New(qkrecover.Options{}), dlq.New(pub, dlq.Options{MaxAttempts: 5}))(noop)
	fmt.Println(middleware.Stages(bad), middleware.Check(bad))
	// Output:
	// [dlq retry recover] <nil>
	// [recover dlq] middleware: recover wraps dlq, but belongs inside it: a panicking message would bypass what recover wraps: never retried in process nor dead-lettered (documented order: otel -> dlq -> retry -> ratelimit -> dedupe -> timeout -> recover)
}
