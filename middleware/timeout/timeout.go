// Package timeout bounds each handler call with a context deadline.
//
// The handler must watch its context: Go cannot stop a goroutine, and
// settling a delivery while its handler still runs would break
// at-least-once, so a handler that ignores ctx runs on and timeout only
// reports, when it returns, that the deadline passed. An attempt that ran
// out of time returns an error that matches ErrTimeout (errors.Is) and is
// transient: retry retries it, and dlq counts it as a failed attempt.
//
// Place timeout inside dedupe, with a deadline shorter than the dedupe lease,
// so that a slow handler gives its claim up before another consumer may take
// it over. retry.Options.AttemptTimeout gives each in-process retry its own
// deadline instead.
package timeout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// ErrTimeout matches (errors.Is) the error of a handler that ran past its
// deadline.
var ErrTimeout = errors.New("handler timed out")

// New returns a middleware that gives each handler call at most d. It panics
// when d <= 0.
func New(d time.Duration) broker.Middleware {
	if d <= 0 {
		panic(fmt.Sprintf("timeout: duration is %v, must be > 0", d))
	}
	return func(next broker.Handler) broker.Handler {
		return &handler{next: next, d: d}
	}
}

type handler struct {
	next broker.Handler
	d    time.Duration
}

// Stage names this middleware for middleware.Check.
func (h *handler) Stage() string { return "timeout" }

// Unwrap returns the handler it wraps.
func (h *handler) Unwrap() broker.Handler { return h.next }

func (h *handler) Handle(ctx context.Context, m *broker.Message) error {
	tctx, cancel := context.WithTimeout(ctx, h.d)
	err := h.next.Handle(tctx, m)
	expired := tctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
	cancel()
	if !expired {
		return err
	}
	if err == nil {
		// The handler finished its work after the deadline without
		// noticing it; the work is done, so the message is acked.
		return nil
	}
	return broker.WrapError(semantics.Transient, "timeout", &timeoutError{d: h.d, err: err})
}

type timeoutError struct {
	d   time.Duration
	err error
}

func (e *timeoutError) Error() string {
	return fmt.Sprintf("handler exceeded %v: %v", e.d, e.err)
}

func (e *timeoutError) Unwrap() []error { return []error{ErrTimeout, e.err} }
