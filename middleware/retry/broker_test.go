package retry_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	"github.com/queuekit/queuekit/middleware/retry"
)

func TestRedeliveryOverBroker(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		caps := e.B.Capabilities()
		if !caps.AttemptCount || !caps.DelayedNack {
			t.Skip("unsupported: needs attempt counts and delayed nacks")
		}
		topic := e.Topic("retry-redeliver")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		var mu sync.Mutex
		var attempts []int
		var at []time.Time
		var done atomic.Bool
		h := retry.New(retry.Options{Mode: retry.Redelivery, Initial: 100 * time.Millisecond, NoJitter: true})(broker.HandlerFunc(
			func(ctx context.Context, m *broker.Message) error {
				mu.Lock()
				attempts, at = append(attempts, m.Attempt), append(at, time.Now())
				mu.Unlock()
				if m.Attempt < 3 {
					return errBoom
				}
				done.Store(true)
				return nil
			}))
		e.Publish(t, topic, &broker.Message{ID: "r"})
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{})
		mwtest.Eventually(t, 20*time.Second, done.Load, "never handled")
		mu.Lock()
		defer mu.Unlock()
		if len(attempts) != 3 || attempts[0] != 1 || attempts[1] != 2 || attempts[2] != 3 {
			t.Fatalf("attempts %v, want [1 2 3]", attempts)
		}
		// The broker held each redelivery back for the backoff: 100ms, then 200ms.
		if g1, g2 := at[1].Sub(at[0]), at[2].Sub(at[1]); g1 < 100*time.Millisecond || g2 < 200*time.Millisecond {
			t.Fatalf("redeliveries came %v and %v apart, want >= 100ms and >= 200ms", g1, g2)
		}
	})
}

func TestInProcessOverBroker(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("retry-inproc")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		var calls atomic.Int32
		var attempts sync.Map
		h := retry.New(retry.Options{Initial: 5 * time.Millisecond})(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			attempts.Store(m.Attempt, true)
			if calls.Add(1) < 3 {
				return errBoom
			}
			return nil
		}))
		e.Publish(t, topic, &broker.Message{ID: "i"})
		stop := mwtest.Consume(t, sub, h, broker.ConsumeOptions{})
		mwtest.Eventually(t, 20*time.Second, func() bool { return calls.Load() == 3 }, "handler ran %d times", calls.Load())
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		n := 0
		attempts.Range(func(any, any) bool { n++; return true })
		if n != 1 {
			t.Fatalf("the message was delivered more than once (%d distinct attempt numbers): in-process retry should hold the delivery", n)
		}
	})
}
