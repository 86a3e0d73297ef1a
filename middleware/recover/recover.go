// Package recover turns a handler's panic into an error that carries the
// panic value and the stack (a *broker.PanicError), so that the message is
// nacked like any failure and the consumer keeps running.
//
// broker.Consume already recovers panics at the top of the chain. This
// middleware still matters: placed innermost, just around the handler, it
// lets retry, dlq and otel see a panic as an ordinary error — retried,
// dead-lettered, counted — where a panic would otherwise unwind straight past
// them; and it protects handlers run outside Consume. OnPanic reports each
// panic with its stack (for logs or metrics).
//
// The package name shadows the builtin recover in files that import it;
// import it under another name there if you need both.
package recover

import (
	"context"
	"runtime/debug"

	"github.com/queuekit/queuekit/broker"
)

// Options tune the recover middleware.
type Options struct {
	// OnPanic observes each panic with the message being handled.
	OnPanic func(msg *broker.Message, p *broker.PanicError)
	// Permanent marks panics broker.Permanent, so that retry does not
	// retry them and dlq dead-letters them at once. By default a panic is
	// an ordinary, retryable failure.
	Permanent bool
}

// New returns the recover middleware.
func New(opts Options) broker.Middleware {
	return func(next broker.Handler) broker.Handler {
		return &handler{next: next, o: opts}
	}
}

type handler struct {
	next broker.Handler
	o    Options
}

// Stage names this middleware for middleware.Check.
func (h *handler) Stage() string { return "recover" }

// Unwrap returns the handler it wraps.
func (h *handler) Unwrap() broker.Handler { return h.next }

func (h *handler) Handle(ctx context.Context, m *broker.Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			p := &broker.PanicError{Value: r, Stack: debug.Stack()}
			if h.o.OnPanic != nil {
				h.o.OnPanic(m, p)
			}
			err = p
			if h.o.Permanent {
				err = broker.Permanent(p)
			}
		}
	}()
	return h.next.Handle(ctx, m)
}
