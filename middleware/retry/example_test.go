package retry_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/retry"
)

func ExampleNew() {
	calls := 0
	h := retry.New(retry.Options{MaxAttempts: 5, Initial: time.Millisecond})(broker.HandlerFunc(
		func(ctx context.Context, m *broker.Message) error {
			calls++
			if calls < 3 {
				return errors.New("downstream unavailable")
			}
			return nil
		}))
	err := h.Handle(context.Background(), &broker.Message{ID: "order-1"})
	fmt.Println(err, "after", calls, "attempts")

	bad := retry.New(retry.Options{})(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		return broker.Permanent(errors.New("malformed order"))
	}))
	fmt.Println(bad.Handle(context.Background(), &broker.Message{ID: "order-2"}))
	// Output:
	// <nil> after 3 attempts
	// malformed order
}

// In Redelivery mode the error carries the delay for Consume's nack.
func ExampleNew_redelivery() {
	h := retry.New(retry.Options{Mode: retry.Redelivery, Initial: time.Second, NoJitter: true})(broker.HandlerFunc(
		func(context.Context, *broker.Message) error { return errors.New("busy") }))
	err := h.Handle(context.Background(), &broker.Message{ID: "order-1", Attempt: 3})
	delay, _ := broker.RetryDelay(err)
	fmt.Println(err, "- redeliver in", delay)
	// Output:
	// busy - redeliver in 4s
}
