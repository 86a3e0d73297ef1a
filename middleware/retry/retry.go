// Package retry retries a failed handler with exponential backoff and jitter,
// bounded by a number of attempts and an elapsed time.
//
// Two modes:
//
//   - InProcess (the default) calls the handler again while holding the
//     delivery, sleeping between attempts, each attempt with a fresh
//     context deadline (Options.AttemptTimeout). Cheap and quick, but the
//     delivery keeps its consumer slot (and, on Kafka, its partition) while
//     it waits.
//   - Redelivery returns the error with a RetryAfter delay computed from the
//     broker's attempt count (Message.Attempt), so Consume nacks the delivery
//     and the broker redelivers it later; nothing waits in the consumer.
//     Where the adapter counts no attempts (Attempt is 0) a bounded
//     in-process count stands in.
//
// Errors for which Options.Retryable is false — by default those marked with
// broker.Permanent — are returned at once. When retrying gives up, the error
// becomes an *Exhausted marked permanent, so that the dlq middleware outside
// dead-letters the message at once; without dlq, Consume nacks it as usual.
// A copy deferred because another copy is in flight (broker.ErrInFlight from
// the dedupe step) passes through untouched and costs no attempt, and so does
// any error once the consumer's context is done (shutdown is not a failure).
//
// Place retry inside dlq and outside dedupe: dlq -> retry -> dedupe ->
// handler (see package middleware). In-process retries under dedupe must fit
// in the dedupe lease.
package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Mode says how a failed message is retried.
type Mode int

const (
	// InProcess retries the handler while holding the delivery.
	InProcess Mode = iota
	// Redelivery nacks the delivery with a backoff delay and lets the
	// broker redeliver it.
	Redelivery
)

// Options tune retry. The zero value retries in process up to 5 attempts,
// starting at 100ms and doubling up to 30s, with 50% jitter.
type Options struct {
	// Mode: InProcess (default) or Redelivery.
	Mode Mode
	// MaxAttempts is the number of attempts, the first included: handler
	// calls per delivery in InProcess mode, deliveries in Redelivery mode.
	// Default 5.
	MaxAttempts int
	// MaxElapsed, when > 0, gives up once the next attempt would start
	// later than this after the first (InProcess), or after the message
	// was published (Redelivery).
	MaxElapsed time.Duration
	// Initial is the delay after the first failure; default 100ms.
	Initial time.Duration
	// Max caps each delay; default 30s.
	Max time.Duration
	// Multiplier grows the delay per attempt; default 2.
	Multiplier float64
	// Jitter is the fraction of each delay drawn at random, in [0, 1]:
	// a delay d becomes a uniform value in [d*(1-Jitter), d]. Default 0.5.
	Jitter float64
	// NoJitter turns jitter off (delays are exact; for tests).
	NoJitter bool
	// AttemptTimeout, when > 0, gives each InProcess attempt a fresh
	// context deadline of its own.
	AttemptTimeout time.Duration
	// Retryable classifies errors; default: every error that is not
	// broker.IsPermanent.
	Retryable func(error) bool
	// OnRetry observes each retry decision: the message, the attempt that
	// failed, its error and the delay before the next attempt.
	OnRetry func(msg *broker.Message, attempt int, err error, delay time.Duration)
}

func (o Options) withDefaults() Options {
	if o.MaxAttempts < 0 || o.MaxElapsed < 0 || o.Initial < 0 || o.Max < 0 || o.Multiplier < 0 ||
		o.Jitter < 0 || o.Jitter > 1 || o.AttemptTimeout < 0 || (o.Mode != InProcess && o.Mode != Redelivery) {
		panic(fmt.Sprintf("retry: invalid Options %+v: durations and counts must be >= 0, Jitter in [0, 1], Mode InProcess or Redelivery", o))
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 5
	}
	if o.Initial == 0 {
		o.Initial = 100 * time.Millisecond
	}
	if o.Max == 0 {
		o.Max = 30 * time.Second
	}
	if o.Max < o.Initial {
		o.Max = o.Initial
	}
	if o.Multiplier == 0 {
		o.Multiplier = 2
	}
	if o.Jitter == 0 {
		o.Jitter = 0.5
	}
	if o.NoJitter {
		o.Jitter = 0
	}
	if o.Retryable == nil {
		o.Retryable = func(err error) bool { return !broker.IsPermanent(err) }
	}
	return o
}

// Backoff returns the delay after failed attempt n (1 for the first
// failure): Initial * Multiplier^(n-1), capped at Max, minus up to Jitter of
// it at random.
func (o Options) Backoff(n int) time.Duration {
	o = o.withDefaults()
	return o.backoff(n)
}

func (o *Options) backoff(n int) time.Duration {
	d := float64(o.Initial)
	for i := 1; i < n && d < float64(o.Max); i++ {
		d *= o.Multiplier
	}
	d = min(d, float64(o.Max))
	if o.Jitter > 0 {
		d -= d * o.Jitter * rand.Float64()
	}
	return time.Duration(d)
}

// Exhausted is the error retry returns when it gives up: too many attempts
// or too long. It unwraps to the last error and is returned marked
// broker.Permanent.
type Exhausted struct {
	Attempts int
	// First is when the first attempt failed, as far as retry knows.
	First time.Time
	// Err is the last attempt's error.
	Err error
}

func (e *Exhausted) Error() string {
	return fmt.Sprintf("retry: gave up after %d attempt(s): %v", e.Attempts, e.Err)
}

// Unwrap returns the last attempt's error.
func (e *Exhausted) Unwrap() error { return e.Err }

// FirstFailure is when the first attempt failed; the dlq middleware reads it.
func (e *Exhausted) FirstFailure() time.Time { return e.First }

// New returns the retry middleware. It panics on invalid options.
func New(opts Options) broker.Middleware {
	o := opts.withDefaults()
	var f *failures
	if o.Mode == Redelivery {
		f = newFailures(0)
	}
	return func(next broker.Handler) broker.Handler {
		return &handler{next: next, o: o, fails: f}
	}
}

type handler struct {
	next  broker.Handler
	o     Options
	fails *failures // Redelivery mode, for adapters that count no attempts
}

// Stage names this middleware for middleware.Check.
func (h *handler) Stage() string { return "retry" }

// Unwrap returns the handler retry wraps.
func (h *handler) Unwrap() broker.Handler { return h.next }

func (h *handler) Handle(ctx context.Context, m *broker.Message) error {
	if h.o.Mode == Redelivery {
		return h.redeliver(ctx, m)
	}
	return h.inProcess(ctx, m)
}

// passThrough reports whether err must be returned as it is.
func (h *handler) passThrough(ctx context.Context, err error) bool {
	return errors.Is(err, broker.ErrInFlight) || ctx.Err() != nil || !h.o.Retryable(err)
}

func (h *handler) inProcess(ctx context.Context, m *broker.Message) error {
	var first time.Time
	var timer *time.Timer
	for attempt := 1; ; attempt++ {
		err := h.attempt(ctx, m)
		if err == nil || h.passThrough(ctx, err) {
			return err
		}
		now := time.Now()
		if attempt == 1 {
			first = now
		}
		delay := h.o.backoff(attempt)
		if rd, ok := broker.RetryDelay(err); ok && rd > delay {
			delay = rd
		}
		if attempt >= h.o.MaxAttempts || (h.o.MaxElapsed > 0 && now.Add(delay).Sub(first) > h.o.MaxElapsed) {
			return broker.Permanent(&Exhausted{Attempts: attempt, First: first, Err: err})
		}
		if h.o.OnRetry != nil {
			h.o.OnRetry(m, attempt, err, delay)
		}
		if timer == nil {
			timer = time.NewTimer(delay)
			defer timer.Stop()
		} else {
			timer.Reset(delay)
		}
		select {
		case <-ctx.Done():
			return err
		case <-timer.C:
		}
	}
}

func (h *handler) attempt(ctx context.Context, m *broker.Message) error {
	if h.o.AttemptTimeout <= 0 {
		return h.next.Handle(ctx, m)
	}
	actx, cancel := context.WithTimeout(ctx, h.o.AttemptTimeout)
	defer cancel()
	return h.next.Handle(actx, m)
}

func (h *handler) redeliver(ctx context.Context, m *broker.Message) error {
	err := h.next.Handle(ctx, m)
	if err == nil {
		h.fails.forget(m.ID)
		return nil
	}
	if h.passThrough(ctx, err) {
		return err
	}
	now := time.Now()
	attempt := m.Attempt
	count, first := h.fails.fail(m.ID, now)
	if attempt <= 0 {
		attempt = count
	}
	since := first // MaxElapsed counts from publication where the adapter says when that was
	if !m.PublishedAt.IsZero() && m.PublishedAt.Before(first) {
		since = m.PublishedAt
	}
	delay := h.o.backoff(attempt)
	if rd, ok := broker.RetryDelay(err); ok && rd > delay {
		delay = rd
	}
	if attempt >= h.o.MaxAttempts || (h.o.MaxElapsed > 0 && now.Add(delay).Sub(since) > h.o.MaxElapsed) {
		h.fails.forget(m.ID)
		return broker.Permanent(&Exhausted{Attempts: attempt, First: first, Err: err})
	}
	if h.o.OnRetry != nil {
		h.o.OnRetry(m, attempt, err, delay)
	}
	return broker.RetryAfter(err, delay)
}
