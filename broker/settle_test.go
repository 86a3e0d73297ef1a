package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Once its subscriber is closed, the deliveries Consume and ConsumeBatch
// hold are the broker's again: settling one is ErrClosed without asking the
// driver (broker/driver's contract), whether it is the ack or nack of a
// handler that finished after the Close, or the giving back of deliveries
// received but not started, or (under at-most-once, Consume going on) the
// ack before handling of a delivery received before the Close, whose
// message is then not handled. The log driver records every Ack and Nack it
// is asked for: none may come after the Close.
func TestConsumeDoesNotSettleAfterSubscriberClose(t *testing.T) {
	for _, tc := range []struct {
		name   string
		batch  bool
		amo    bool  // at-most-once, and ctx not cancelled
		result error // of the handler that finishes after the Close
	}{
		{"Consume/ack", false, false, nil},
		{"Consume/nack", false, false, errors.New("failed")},
		{"Consume/at-most-once", false, true, nil},
		{"ConsumeBatch/ack", true, false, nil},
		{"ConsumeBatch/nack", true, false, errors.New("failed")},
		{"ConsumeBatch/at-most-once", true, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 10
			opts := broker.SubscriberOptions{}
			if tc.amo {
				opts.Guarantee = semantics.AtMostOnce
			}
			ld, sub := logTopic(t, n, n, opts, nil)
			started, finish := make(chan struct{}), make(chan struct{})
			var once sync.Once
			var calls atomic.Int32
			block := func() {
				calls.Add(1)
				once.Do(func() { close(started) })
				<-finish
			}
			var mu sync.Mutex
			var reported []error
			onError := func(_ *broker.Message, err error) {
				mu.Lock()
				reported = append(reported, err)
				mu.Unlock()
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				if tc.batch {
					// One message per batch: the others stay received and
					// not started, to be given back.
					errc <- broker.ConsumeBatch(ctx, sub, broker.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) []error {
						block()
						return broker.FailAll(len(msgs), tc.result)
					}), broker.BatchOptions{MaxBatch: 1, ConsumeOptions: broker.ConsumeOptions{OnError: onError}})
					return
				}
				errc <- broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					block()
					return tc.result
				}), broker.ConsumeOptions{OnError: onError})
			}()
			wait(t, started, "the first handler to start")
			before := len(ld.settlements()) // at-most-once: the first ack
			if err := sub.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !tc.amo {
				cancel()
			}
			close(finish)
			if err := <-errc; err != nil && !errors.Is(err, broker.ErrClosed) {
				t.Fatal(err)
			}
			if s := ld.settlements()[before:]; len(s) != 0 {
				t.Fatalf("the driver was asked to settle %v after its subscriber closed", s)
			}
			if c := calls.Load(); c != 1 {
				t.Errorf("the handler ran %d times; want once, before the Close", c)
			}
			if tc.result == nil && !tc.amo {
				// The handled message's ack failed: it is reported, as
				// it will be redelivered.
				mu.Lock()
				defer mu.Unlock()
				found := false
				for _, err := range reported {
					found = found || errors.Is(err, broker.ErrClosed) && broker.KindOf(err) == semantics.Closed
				}
				if !found {
					t.Errorf("the failed ack was not reported: %v", fmt.Sprint(reported))
				}
			}
		})
	}
}
