// Package middleware composes queuekit's handler middleware into the stack
// most consumers want, and checks the order of a hand-made chain.
//
// Each middleware is a small package of its own, every one a
// broker.Middleware (func(broker.Handler) broker.Handler) that works
// unchanged over every adapter:
//
//	retry      backoff with jitter, in process or by redelivery
//	dedupe     the idempotent consumer (memory; Redis in dedupe/redisstore;
//	           PostgreSQL and a transactional inbox in dedupe/pgstore)
//	dlq        dead-letter after N attempts or a permanent error; Redrive
//	ordering   per-key sequential dispatch across N workers
//	timeout    a deadline per handler call
//	recover    a panic becomes an error with its stack
//	ratelimit  token bucket (rate and burst) and a concurrency limit
//	otel       OpenTelemetry metrics and tracing, W3C trace context in headers
//
// # Composition order
//
// Outermost first (broker.Chain(a, b)(h) runs a around b around h):
//
//	otel -> dlq -> retry -> ratelimit -> dedupe -> timeout -> recover -> handler
//
// Why this order:
//
//   - otel outermost sees every delivery and its final outcome (acked,
//     nacked, dead-lettered) and the whole latency.
//   - dlq outside retry: it acts on what retry gives up on (retry's
//     exhaustion is a permanent error).
//   - dlq outside dedupe: were dedupe outside, a message that dlq
//     dead-letters (and acks) would be recorded as handled, and its
//     redriven copy skipped as a duplicate. dedupe.New panics when it wraps
//     a chain that holds dlq. For the same reason, do not combine dlq with
//     semantics.EffectivelyOnce in broker.Consume (which puts its
//     idempotency step outermost): put dedupe in the chain instead.
//   - retry outside dedupe: each in-process attempt claims afresh, and a
//     failed attempt releases its claim at once.
//   - ratelimit inside retry: every attempt takes a token.
//   - timeout inside dedupe, with a deadline below the dedupe lease.
//   - recover innermost: a panic becomes an error before it reaches retry,
//     dlq and otel. Outside them, a panic would unwind past them — a
//     message that always panics would never be retried in process nor
//     dead-lettered, and would be redelivered forever on a broker without
//     native dead-lettering. (broker.Consume recovers panics anyway; you
//     may put a second recover outermost when running handlers elsewhere.)
//
// Check reports the orderings that break a guarantee.
//
// # Default
//
// One line gives the stack above with sensible settings:
//
//	h := middleware.Default(middleware.Options{Publisher: pub, Store: dedupe.NewMemoryStore(dedupe.MemoryOptions{})})(handler)
//	err := broker.Consume(ctx, sub, h, broker.ConsumeOptions{Concurrency: 8})
//
// Its per-message overhead with the memory store is measured by
// BenchmarkDefaultStack.
package middleware

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dlq"
	qkrecover "github.com/queuekit/queuekit/middleware/recover"
	"github.com/queuekit/queuekit/middleware/retry"
	"github.com/queuekit/queuekit/middleware/timeout"
)

// Options configure Default. Every field is optional; a zero Options gives
// recover and retry alone.
type Options struct {
	// Publisher publishes dead letters; nil leaves dlq out.
	Publisher broker.Publisher
	// Store records handled message keys; nil leaves dedupe out.
	Store broker.IdempotencyStore
	// MaxAttempts is the number of deliveries before a message is
	// dead-lettered; default 5.
	MaxAttempts int
	// NativeDeadLetter says the subscriber's broker dead-letters by itself
	// after SubscriberOptions.MaxAttempts (set it to
	// b.Capabilities().NativeDeadLetter when the subscriber has
	// MaxAttempts): retry then only spaces redeliveries out, and dlq only
	// publishes permanent failures.
	NativeDeadLetter bool
	// Retry tunes retry. Default: Redelivery mode (Nack with backoff, no
	// consumer slot held), MaxAttempts from above.
	Retry *retry.Options
	// Dedupe tunes dedupe.
	Dedupe dedupe.Options
	// DLQ tunes dlq; its MaxAttempts and Native come from above.
	DLQ dlq.Options
	// Timeout, when > 0, bounds each handler call.
	Timeout time.Duration
	// Recover tunes recover.
	Recover qkrecover.Options
	// Observe is put outermost: the metrics and tracing middleware (see
	// package middleware/otel), or any other.
	Observe broker.Middleware
}

// Default returns the documented stack: Observe -> dlq -> retry -> dedupe
// -> timeout -> recover -> handler, leaving out what Options leave out. It
// panics on invalid options, as the middleware it composes do.
func Default(opts Options) broker.Middleware {
	if opts.MaxAttempts < 0 {
		panic(fmt.Sprintf("middleware: MaxAttempts is %d, must be >= 0", opts.MaxAttempts))
	}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 5
	}
	ro := retry.Options{Mode: retry.Redelivery, MaxAttempts: opts.MaxAttempts}
	if opts.Retry != nil {
		ro = *opts.Retry
	}
	if opts.NativeDeadLetter {
		ro.MaxAttempts = math.MaxInt32 // the broker decides when to give up
	}
	var chain []broker.Middleware
	if opts.Observe != nil {
		chain = append(chain, opts.Observe)
	}
	if opts.Publisher != nil {
		do := opts.DLQ
		do.MaxAttempts, do.Native = opts.MaxAttempts, opts.NativeDeadLetter
		chain = append(chain, dlq.New(opts.Publisher, do))
	}
	chain = append(chain, retry.New(ro))
	if opts.Store != nil {
		chain = append(chain, dedupe.New(opts.Store, opts.Dedupe))
	}
	if opts.Timeout > 0 {
		chain = append(chain, timeout.New(opts.Timeout))
	}
	chain = append(chain, qkrecover.New(opts.Recover))
	return broker.Chain(chain...)
}

// Stages lists the queuekit middleware in h's chain, outermost first, by
// name ("otel", "dlq", "retry", ...). It follows handlers that have an
// Unwrap() broker.Handler method — as every queuekit middleware does, and as
// your own may — and stops at the first that has none. A handler with Unwrap
// but no Stage() string method is listed as "?".
func Stages(h broker.Handler) []string {
	var out []string
	for h != nil {
		name := "?"
		if s, ok := h.(interface{ Stage() string }); ok {
			name = s.Stage()
		}
		u, ok := h.(interface{ Unwrap() broker.Handler })
		if !ok {
			if name != "?" {
				out = append(out, name)
			}
			break
		}
		out = append(out, name)
		h = u.Unwrap()
	}
	return out
}

// Check returns an error describing each ordering in h's chain that breaks
// a guarantee (see the package doc), or nil:
//
//   - dedupe outside dlq: redriven messages would be skipped as duplicates;
//   - recover outside dlq or retry with no recover inside them: a panicking
//     message would bypass them.
func Check(h broker.Handler) error {
	st := Stages(h)
	at := func(name string, from int) int {
		for i := from; i < len(st); i++ {
			if st[i] == name {
				return i
			}
		}
		return -1
	}
	var errs []error
	if d := at("dedupe", 0); d >= 0 && at("dlq", d+1) > d {
		errs = append(errs, errors.New("middleware: dedupe wraps dlq: a dead-lettered message is recorded as handled, so its redriven copy would be skipped (order dlq -> retry -> dedupe)"))
	}
	if r := at("recover", 0); r >= 0 {
		for _, s := range []string{"dlq", "retry"} {
			if i := at(s, r+1); i > r && at("recover", i+1) < 0 {
				errs = append(errs, fmt.Errorf("middleware: recover wraps %s with no recover inside it: a panicking message bypasses %s (put recover innermost)", s, s))
			}
		}
	}
	return errors.Join(errs...)
}
