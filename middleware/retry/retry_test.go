package retry_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/retry"
)

var errBoom = errors.New("boom")

// failing returns a handler that fails its first n calls and counts calls.
func failing(n int32, calls *atomic.Int32) broker.Handler {
	return broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if calls.Add(1) <= n {
			return errBoom
		}
		return nil
	})
}

func TestInProcessRetriesUntilSuccess(t *testing.T) {
	var calls atomic.Int32
	var delays []time.Duration
	h := retry.New(retry.Options{Initial: time.Millisecond, NoJitter: true,
		OnRetry: func(_ *broker.Message, attempt int, err error, d time.Duration) {
			if !errors.Is(err, errBoom) || attempt != len(delays)+1 {
				t.Errorf("OnRetry(attempt %d, %v)", attempt, err)
			}
			delays = append(delays, d)
		}})(failing(2, &calls))
	if err := h.Handle(context.Background(), &broker.Message{ID: "a"}); err != nil {
		t.Fatalf("Handle = %v, want nil after two retries", err)
	}
	if calls.Load() != 3 {
		t.Fatalf("handler called %d times, want 3", calls.Load())
	}
	if want := []time.Duration{time.Millisecond, 2 * time.Millisecond}; len(delays) != 2 || delays[0] != want[0] || delays[1] != want[1] {
		t.Fatalf("delays %v, want %v (exponential, no jitter)", delays, want)
	}
}

func TestPermanentIsNotRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts retry.Options
		err  error
	}{
		{"broker.Permanent", retry.Options{}, broker.Permanent(errBoom)},
		{"classifier", retry.Options{Retryable: func(err error) bool { return !errors.Is(err, errBoom) }}, errBoom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, mode := range []retry.Mode{retry.InProcess, retry.Redelivery} {
				var calls atomic.Int32
				o := tc.opts
				o.Mode = mode
				h := retry.New(o)(broker.HandlerFunc(func(context.Context, *broker.Message) error {
					calls.Add(1)
					return tc.err
				}))
				err := h.Handle(context.Background(), &broker.Message{ID: "a", Attempt: 1})
				if calls.Load() != 1 || !errors.Is(err, errBoom) {
					t.Fatalf("mode %d: %d calls, err %v; want 1 call and the error itself", mode, calls.Load(), err)
				}
				if _, ok := broker.RetryDelay(err); ok {
					t.Fatalf("mode %d: a non-retryable error got a retry delay", mode)
				}
			}
		})
	}
}

func TestInProcessGivesUpAfterMaxAttempts(t *testing.T) {
	var calls atomic.Int32
	h := retry.New(retry.Options{MaxAttempts: 3, Initial: time.Microsecond})(failing(100, &calls))
	err := h.Handle(context.Background(), &broker.Message{ID: "a"})
	var ex *retry.Exhausted
	if !errors.As(err, &ex) || ex.Attempts != 3 || calls.Load() != 3 {
		t.Fatalf("err %v after %d calls; want *Exhausted with 3 attempts", err, calls.Load())
	}
	if !broker.IsPermanent(err) || !errors.Is(err, errBoom) || ex.FirstFailure().IsZero() {
		t.Fatalf("exhausted error must be permanent, wrap the last error and date the first failure: %v", err)
	}
}

func TestInProcessMaxElapsed(t *testing.T) {
	// Delays 10ms then 20ms: the third attempt would start 30ms after the
	// first failure, past MaxElapsed, so retry gives up after two.
	var calls atomic.Int32
	h := retry.New(retry.Options{MaxAttempts: 100, Initial: 10 * time.Millisecond, MaxElapsed: 25 * time.Millisecond, NoJitter: true})(failing(100, &calls))
	err := h.Handle(context.Background(), &broker.Message{ID: "a"})
	var ex *retry.Exhausted
	if !errors.As(err, &ex) || calls.Load() != 2 {
		t.Fatalf("err %v after %d calls; want *Exhausted after 2", err, calls.Load())
	}
}

func TestAttemptTimeoutIsFreshPerAttempt(t *testing.T) {
	var calls atomic.Int32
	h := retry.New(retry.Options{Initial: time.Microsecond, AttemptTimeout: 20 * time.Millisecond})(broker.HandlerFunc(
		func(ctx context.Context, m *broker.Message) error {
			if _, ok := ctx.Deadline(); !ok {
				t.Error("attempt has no deadline")
			}
			if calls.Add(1) == 1 {
				<-ctx.Done() // the first attempt runs out of time
				return ctx.Err()
			}
			return ctx.Err() // a fresh deadline: not expired
		}))
	if err := h.Handle(context.Background(), &broker.Message{ID: "a"}); err != nil || calls.Load() != 2 {
		t.Fatalf("err %v after %d calls; want success on the second attempt", err, calls.Load())
	}
}

func TestShutdownStopsRetrying(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	h := retry.New(retry.Options{Initial: time.Hour})(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		calls.Add(1)
		cancel() // shutdown begins while the handler fails
		return errBoom
	}))
	err := h.Handle(ctx, &broker.Message{ID: "a"})
	if !errors.Is(err, errBoom) || broker.IsPermanent(err) || calls.Load() != 1 {
		t.Fatalf("err %v after %d calls; want the plain error at once: shutdown is not a failure", err, calls.Load())
	}
}

func TestInFlightPassesThrough(t *testing.T) {
	var calls atomic.Int32
	h := retry.New(retry.Options{})(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		calls.Add(1)
		return broker.RetryAfter(broker.ErrInFlight, 7*time.Second)
	}))
	err := h.Handle(context.Background(), &broker.Message{ID: "a", Attempt: 9})
	if d, _ := broker.RetryDelay(err); calls.Load() != 1 || !errors.Is(err, broker.ErrInFlight) || d != 7*time.Second || broker.IsPermanent(err) {
		t.Fatalf("err %v (delay %v) after %d calls; want ErrInFlight untouched", err, d, calls.Load())
	}
}

func TestRedeliveryDelaysByAttempt(t *testing.T) {
	o := retry.Options{Mode: retry.Redelivery, MaxAttempts: 4, Initial: 100 * time.Millisecond, NoJitter: true}
	var calls atomic.Int32
	h := retry.New(o)(failing(100, &calls))
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond} {
		err := h.Handle(context.Background(), &broker.Message{ID: "a", Attempt: attempt})
		if d, ok := broker.RetryDelay(err); !ok || d != want || broker.IsPermanent(err) {
			t.Fatalf("attempt %d: err %v delay %v; want RetryAfter %v", attempt, err, d, want)
		}
	}
	err := h.Handle(context.Background(), &broker.Message{ID: "a", Attempt: 4})
	var ex *retry.Exhausted
	if !errors.As(err, &ex) || ex.Attempts != 4 || !broker.IsPermanent(err) {
		t.Fatalf("last attempt: %v; want permanent *Exhausted", err)
	}
	if calls.Load() != 4 {
		t.Fatalf("handler called %d times, want once per delivery", calls.Load())
	}
}

func TestRedeliveryCountsWhereTheBrokerDoesNot(t *testing.T) {
	var calls atomic.Int32
	h := retry.New(retry.Options{Mode: retry.Redelivery, MaxAttempts: 3})(failing(100, &calls))
	m := &broker.Message{ID: "no-count"} // Attempt 0: the adapter cannot tell
	for i := 1; i <= 2; i++ {
		if err := h.Handle(context.Background(), m); broker.IsPermanent(err) {
			t.Fatalf("delivery %d gave up early: %v", i, err)
		}
	}
	var ex *retry.Exhausted
	if err := h.Handle(context.Background(), m); !errors.As(err, &ex) || ex.Attempts != 3 {
		t.Fatalf("third delivery: %v; want *Exhausted after 3", err)
	}
}

func TestRedeliveryMaxElapsedFromPublication(t *testing.T) {
	h := retry.New(retry.Options{Mode: retry.Redelivery, MaxAttempts: 100, MaxElapsed: time.Minute})(failing(100, new(atomic.Int32)))
	err := h.Handle(context.Background(), &broker.Message{ID: "old", Attempt: 2, PublishedAt: time.Now().Add(-time.Hour)})
	if !broker.IsPermanent(err) {
		t.Fatalf("a message published an hour ago with MaxElapsed 1m: %v; want exhausted", err)
	}
}

func TestBackoff(t *testing.T) {
	o := retry.Options{Initial: 100 * time.Millisecond, Max: time.Second, Jitter: 0.5}
	for n := 1; n <= 10; n++ {
		full := min(100*time.Millisecond<<(n-1), time.Second)
		for range 50 {
			d := o.Backoff(n)
			if d < full/2 || d > full {
				t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", n, d, full/2, full)
			}
		}
	}
}

func TestInvalidOptionsPanic(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("negative MaxAttempts accepted")
		}
	}()
	retry.New(retry.Options{MaxAttempts: -1})
}
