package timeout_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/timeout"
)

func ExampleNew() {
	h := timeout.New(10 * time.Millisecond)(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		select { // a call that watches its context
		case <-time.After(time.Minute):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	err := h.Handle(context.Background(), &broker.Message{ID: "order-1"})
	fmt.Println(errors.Is(err, timeout.ErrTimeout))
	// Output:
	// true
}
