package mwtest

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Outcome is what happened to the one message of a dedupe scenario.
type Outcome struct {
	// Handled counts handler runs that succeeded.
	Handled int
	// Deferred counts copies nacked because another held the claim.
	Deferred int
}

// CrashAfterClaim publishes one message; a first consumer receives it, claims
// it in store and dies mid-handler (its goroutine exits, so the claim is
// neither completed nor released) and its subscriber closes without settling.
// A second consumer of the group, with the same store, gets the redelivery.
// It returns once a copy was acked. A correct store defers the redelivery
// until the lease expires and then handles it (Handled 1); the naive "SETNX
// then handle" acks it as a duplicate (Handled 0: lost).
func CrashAfterClaim(t *testing.T, e *Env, store broker.IdempotencyStore, lease time.Duration) Outcome {
	t.Helper()
	topic := e.Topic("crash")
	first := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "g"})
	second := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "g"})
	e.Publish(t, topic, &broker.Message{ID: "crash-" + Unique(), Payload: []byte("order")})

	var runs, handled, deferred, acked atomic.Int32
	crashed := make(chan struct{})
	h := broker.Idempotent(store, broker.IdempotencyOptions{Lease: lease, InFlightDelay: lease / 4})(broker.HandlerFunc(
		func(ctx context.Context, m *broker.Message) error {
			if runs.Add(1) == 1 {
				close(crashed)
				runtime.Goexit() // the consumer process dies here
			}
			handled.Add(1)
			return nil
		}))

	d := Receive(t, first, 20*time.Second)
	go func() { _ = h.Handle(context.Background(), d.Message()) }()
	<-crashed
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_ = first.Close(ctx) // unsettled: the broker redelivers it
	cancel()

	stop := Consume(t, second, countAcks(h, &acked), broker.ConsumeOptions{OnError: func(_ *broker.Message, err error) {
		if errors.Is(err, broker.ErrInFlight) {
			deferred.Add(1)
		}
	}})
	Eventually(t, 30*time.Second, func() bool { return acked.Load() >= 1 }, "%s: the redelivered message was never settled", e.Name)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	return Outcome{Handled: int(handled.Load()), Deferred: int(deferred.Load())}
}

// DuplicateInFlight publishes a message twice (one ID, no key) and consumes
// with two handlers at once: the second copy arrives while the first is being
// handled. The handler of the copy that claimed the message waits until the
// other copy has been dealt with, then succeeds — or fails, when firstFails. It returns once both
// copies were acked. A correct store gives Handled 1 either way (the second
// copy is deferred, not acked as done); the naive SETNX gives Handled 0 when
// the first copy fails: the second was acked as a duplicate, and the
// redelivery of the first is too.
func DuplicateInFlight(t *testing.T, e *Env, store broker.IdempotencyStore, firstFails bool) Outcome {
	t.Helper()
	topic := e.Topic("dup")
	sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "g"})
	id := "dup-" + Unique()
	e.Publish(t, topic, &broker.Message{ID: id}, &broker.Message{ID: id})

	var runs, handled, deferred, acked atomic.Int32
	var holder atomic.Pointer[broker.Message] // the delivery whose handler holds the claim
	otherDone := make(chan struct{})          // closed when a copy other than holder's was dealt with
	var once sync.Once
	h := broker.Idempotent(store, broker.IdempotencyOptions{Lease: time.Minute, InFlightDelay: 50 * time.Millisecond})(broker.HandlerFunc(
		func(ctx context.Context, m *broker.Message) error {
			if runs.Add(1) == 1 {
				holder.Store(m)
				select {
				case <-otherDone:
				case <-ctx.Done():
					return ctx.Err()
				}
				if firstFails {
					return errors.New("first copy failed")
				}
			}
			handled.Add(1)
			return nil
		}))
	outer := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		err := h.Handle(ctx, m)
		if holder.Load() != m {
			once.Do(func() { close(otherDone) })
		}
		return err
	})
	stop := Consume(t, sub, countAcks(outer, &acked), broker.ConsumeOptions{Concurrency: 2, OnError: func(_ *broker.Message, err error) {
		if errors.Is(err, broker.ErrInFlight) {
			deferred.Add(1)
		}
	}})
	Eventually(t, 30*time.Second, func() bool { return acked.Load() >= 2 }, "%s: the two copies were not both settled (acked %d)", e.Name, acked.Load())
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	return Outcome{Handled: int(handled.Load()), Deferred: int(deferred.Load())}
}

func countAcks(h broker.Handler, acked *atomic.Int32) broker.Handler {
	return broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		err := h.Handle(ctx, m)
		if err == nil {
			acked.Add(1)
		}
		return err
	})
}
