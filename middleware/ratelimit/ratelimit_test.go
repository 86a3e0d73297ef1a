package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	"github.com/queuekit/queuekit/middleware/ratelimit"
)

func publishN(t *testing.T, e *mwtest.Env, topic string, n int) {
	var msgs []*broker.Message
	for i := range n {
		msgs = append(msgs, &broker.Message{ID: fmt.Sprint(i)})
	}
	e.Publish(t, topic, msgs...)
}

// A burst passes at once; sustained overload waits at the rate.
func TestRateOverBrokers(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("ratelimit")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		publishN(t, e, topic, 90)
		var mu sync.Mutex
		var at []time.Time
		h := ratelimit.New(ratelimit.Options{Rate: 100, Burst: 50})(broker.HandlerFunc(func(context.Context, *broker.Message) error {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
			return nil
		}))
		start := time.Now()
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{Concurrency: 8})
		mwtest.Eventually(t, 20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(at) == 90 }, "not all handled")
		mu.Lock()
		defer mu.Unlock()
		// 40 messages past the burst of 50 at 100/s take at least ~400ms.
		if d := at[89].Sub(start); d < 350*time.Millisecond {
			t.Fatalf("90 messages at 100/s with a burst of 50 took %v, want >= ~400ms", d)
		}
	})
}

func TestMaxWaitNacks(t *testing.T) {
	var calls atomic.Int32
	h := ratelimit.New(ratelimit.Options{Rate: 1, MaxWait: 10 * time.Millisecond})(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		calls.Add(1)
		return nil
	}))
	ctx := context.Background()
	if err := h.Handle(ctx, &broker.Message{}); err != nil {
		t.Fatal(err)
	}
	err := h.Handle(ctx, &broker.Message{})
	if d, ok := broker.RetryDelay(err); !errors.Is(err, ratelimit.ErrLimited) || !ok || d < 900*time.Millisecond || calls.Load() != 1 {
		t.Fatalf("second message: %v (delay %v), %d calls; want ErrLimited after ~1s, not handled", err, d, calls.Load())
	}
}

func TestConcurrencyOverBrokers(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("concurrency")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		publishN(t, e, topic, 40)
		var running, peak, done atomic.Int32
		h := ratelimit.Concurrency(3)(broker.HandlerFunc(func(context.Context, *broker.Message) error {
			n := running.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(5 * time.Millisecond) // hold the slot while others try
			running.Add(-1)
			done.Add(1)
			return nil
		}))
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{Concurrency: 10})
		mwtest.Eventually(t, 20*time.Second, func() bool { return done.Load() == 40 }, "handled %d of 40", done.Load())
		if p := peak.Load(); p != 3 {
			t.Fatalf("peak concurrency %d, want 3", p)
		}
	})
}
