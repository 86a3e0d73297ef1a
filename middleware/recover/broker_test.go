package recover_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	qkrecover "github.com/queuekit/queuekit/middleware/recover"
	"github.com/queuekit/queuekit/middleware/retry"
)

// A handler that panics on some messages: each panic is retried like an
// error, and the consumer keeps handling the rest.
func TestConsumerSurvivesPanics(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("recover")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		var handled, panics atomic.Int32
		seen := map[string]*atomic.Int32{}
		var msgs []*broker.Message
		for i := range 20 {
			id := fmt.Sprint("m-", i)
			seen[id] = new(atomic.Int32)
			msgs = append(msgs, &broker.Message{ID: id})
		}
		h := broker.Chain(
			retry.New(retry.Options{Initial: time.Millisecond}),
			qkrecover.New(qkrecover.Options{OnPanic: func(*broker.Message, *broker.PanicError) { panics.Add(1) }}),
		)(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if seen[m.ID].Add(1) == 1 && m.ID[len(m.ID)-1] == '3' {
				panic("first try of " + m.ID)
			}
			handled.Add(1)
			return nil
		}))
		e.Publish(t, topic, msgs...)
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{Concurrency: 2})
		mwtest.Eventually(t, 20*time.Second, func() bool { return handled.Load() == 20 }, "handled %d of 20", handled.Load())
		if panics.Load() != 2 { // m-3 and m-13
			t.Fatalf("%d panics recovered, want 2", panics.Load())
		}
	})
}
