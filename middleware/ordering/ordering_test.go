package ordering_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	"github.com/queuekit/queuekit/middleware/ordering"
	"github.com/queuekit/queuekit/semantics"
)

// run starts ordering.Run in the background until the test ends.
func run(t *testing.T, sub broker.Subscriber, h broker.Handler, opts ordering.Options) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ordering.Run(ctx, sub, h, opts, 10*time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// Thousands of keys, random handler latencies, 16 workers: every key's
// messages are handled in publish order, never two of a key at once, and
// different keys do run in parallel.
func TestPerKeyOrderUnderRandomLatency(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		const keys, perKey = 1000, 3
		topic := e.Topic("ordering")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Prefetch: 512})
		ledger := semantics.NewLedger()
		var msgs []*broker.Message
		for k := range keys { // a key's messages back to back: the hardest case
			for i := range perKey {
				m := &broker.Message{ID: fmt.Sprintf("k%d-%d", k, i), Key: fmt.Sprint("k", k)}
				msgs = append(msgs, m)
				ledger.Published(m.ID, m.Key)
			}
		}
		var running sync.Map // key -> *atomic.Int32
		var now, peak, overlaps, handled atomic.Int32
		h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			c, _ := running.LoadOrStore(m.Key, new(atomic.Int32))
			if c.(*atomic.Int32).Add(1) > 1 {
				overlaps.Add(1)
			}
			n := now.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond) // the handler's work
			ledger.Handled(m.ID)
			now.Add(-1)
			c.(*atomic.Int32).Add(-1)
			handled.Add(1)
			return nil
		})
		run(t, sub, h, ordering.Options{Workers: 16})
		e.Publish(t, topic, msgs...)
		mwtest.Eventually(t, 45*time.Second, func() bool { return handled.Load() >= keys*perKey }, "handled %d of %d", handled.Load(), keys*perKey)
		r := ledger.Report()
		if len(r.Lost) != 0 || r.Duplicates != 0 || len(r.Reordered) != 0 || overlaps.Load() != 0 {
			t.Fatalf("lost %d, duplicates %d, reordered %d (%v), overlapping handlers of one key %d",
				len(r.Lost), r.Duplicates, len(r.Reordered), first(r.Reordered), overlaps.Load())
		}
		if peak.Load() < 2 {
			t.Fatalf("peak concurrency %d: keys did not run in parallel", peak.Load())
		}
	})
}

func first(ids []string) []string { return ids[:min(5, len(ids))] }

// A slow key holds up only itself: with 2 workers, everything else flows
// while one handler is stuck (per-key hashing to workers would strand about
// half the keys behind it).
func TestNoHeadOfLineBlocking(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("hol")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		release := make(chan struct{})
		var others atomic.Int32
		h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if m.Key == "slow" {
				<-release
				return nil
			}
			others.Add(1)
			return nil
		})
		run(t, sub, h, ordering.Options{Workers: 2})
		msgs := []*broker.Message{{ID: "slow-1", Key: "slow"}, {ID: "slow-2", Key: "slow"}}
		for i := range 100 {
			msgs = append(msgs, &broker.Message{ID: fmt.Sprint("o", i), Key: fmt.Sprint("key-", i)})
		}
		e.Publish(t, topic, msgs...)
		mwtest.Eventually(t, 20*time.Second, func() bool { return others.Load() == 100 }, "only %d of 100 other keys handled while one key is stuck", others.Load())
		close(release)
	})
}

// Failures are nacked with their RetryAfter delay, panics are recovered
// and nacked, and the messages come back.
func TestFailuresAreNackedAndPanicsRecovered(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("ordering-fail")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		var tries sync.Map
		var handled atomic.Int32
		var errs sync.Map
		h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			n, _ := tries.LoadOrStore(m.ID, new(atomic.Int32))
			if n.(*atomic.Int32).Add(1) == 1 {
				if m.ID == "panic" {
					panic("first try")
				}
				return broker.RetryAfter(errors.New("later"), 20*time.Millisecond)
			}
			handled.Add(1)
			return nil
		})
		run(t, sub, h, ordering.Options{OnError: func(m *broker.Message, err error) { errs.Store(m.ID, err) }})
		e.Publish(t, topic, &broker.Message{ID: "panic", Key: "a"}, &broker.Message{ID: "fail", Key: "b"})
		mwtest.Eventually(t, 20*time.Second, func() bool { return handled.Load() == 2 }, "handled %d of 2", handled.Load())
		if err, _ := errs.Load("panic"); err == nil {
			t.Fatal("the panic was not reported")
		} else if pe := new(broker.PanicError); !errors.As(err.(error), &pe) {
			t.Fatalf("panic reported as %v", err)
		}
	})
}

func TestCloseNacksWhatDidNotStart(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("ordering-close")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		e.Publish(t, topic, &broker.Message{ID: "1", Key: "a"}, &broker.Message{ID: "2", Key: "b"})
		started := make(chan struct{})
		d := ordering.New(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if m.ID == "1" {
				close(started)
			}
			<-ctx.Done() // stuck until Close gives up on it
			return ctx.Err()
		}), ordering.Options{Workers: 1})
		for range 2 {
			if err := d.Dispatch(context.Background(), mwtest.Receive(t, sub, 20*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		<-started
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := d.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close = %v, want the deadline", err)
		}
		if err := d.Dispatch(context.Background(), nil); !errors.Is(err, ordering.ErrClosed) {
			t.Fatalf("Dispatch after Close = %v", err)
		}
		// Both come back: "1" nacked by its cancelled handler, "2" nacked unstarted.
		got := map[string]bool{}
		for len(got) < 2 {
			del := mwtest.Receive(t, sub, 20*time.Second)
			got[del.Message().ID] = true
			_ = del.Ack(context.Background())
		}
	})
}
