package timeout_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	"github.com/queuekit/queuekit/middleware/timeout"
)

// A handler stuck on its first delivery times out, the message is nacked,
// and the redelivery is handled.
func TestStuckHandlerIsRedelivered(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("timeout")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		var calls, handled, timeouts atomic.Int32
		h := timeout.New(100 * time.Millisecond)(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if calls.Add(1) == 1 {
				<-ctx.Done() // stuck until the deadline
				return ctx.Err()
			}
			handled.Add(1)
			return nil
		}))
		e.Publish(t, topic, &broker.Message{ID: "slow"})
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{OnError: func(_ *broker.Message, err error) {
			if errors.Is(err, timeout.ErrTimeout) {
				timeouts.Add(1)
			}
		}})
		mwtest.Eventually(t, 20*time.Second, func() bool { return handled.Load() == 1 }, "never handled after the timeout")
		if timeouts.Load() != 1 {
			t.Fatalf("%d timeouts reported, want 1", timeouts.Load())
		}
	})
}
