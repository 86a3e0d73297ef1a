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
	"strings"
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
	Publisher broker.Sender
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

// Stage is the protocol by which a middleware's handler makes itself known
// in a chain: every queuekit middleware implements it, and so may yours, so
// that Stages and Check can see the chain. Stage names the middleware
// ("dlq", "retry", ...); Unwrap returns the handler it wraps.
type Stage interface {
	broker.Handler
	Stage() string
	Unwrap() broker.Handler
}

// stack is the documented order, outermost first, and what goes wrong when
// a stage is moved inside a later one. Default builds its chain from it and
// Check judges a chain by it.
var stack = []struct {
	name string
	// build makes the stage from Default's options, nil when they leave
	// it out.
	build func(o *Options) broker.Middleware
	// inside says why this stage goes inside the ones before it (for
	// Check's message).
	inside string
}{
	{"otel", func(o *Options) broker.Middleware { return o.Observe },
		""},
	{"dlq", func(o *Options) broker.Middleware {
		if o.Publisher == nil {
			return nil
		}
		do := o.DLQ
		do.MaxAttempts, do.Native = o.MaxAttempts, o.NativeDeadLetter
		return dlq.New(o.Publisher, do)
	}, "otel must see every delivery's final outcome, dead-lettering included"},
	{"retry", func(o *Options) broker.Middleware { return retry.New(o.retry()) },
		"dlq acts on what retry gives up on"},
	{"ratelimit", func(o *Options) broker.Middleware { return nil }, // not in Default: a rate is the caller's choice
		"every attempt of retry must take a token"},
	{"dedupe", func(o *Options) broker.Middleware {
		if o.Store == nil {
			return nil
		}
		return dedupe.New(o.Store, o.Dedupe)
	}, "a message dlq dead-letters would be recorded as handled and its redriven copy skipped as a duplicate; each retry attempt must claim afresh"},
	{"timeout", func(o *Options) broker.Middleware {
		if o.Timeout <= 0 {
			return nil
		}
		return timeout.New(o.Timeout)
	}, "the handler's deadline must stay below dedupe's claim lease"},
	{"recover", func(o *Options) broker.Middleware { return qkrecover.New(o.Recover) },
		"a panicking message would bypass what recover wraps: never retried in process nor dead-lettered"},
}

func rank(name string) int {
	for i, s := range stack {
		if s.name == name {
			return i
		}
	}
	return -1
}

func (o *Options) retry() retry.Options {
	ro := retry.Options{Mode: retry.Redelivery, MaxAttempts: o.MaxAttempts}
	if o.Retry != nil {
		ro = *o.Retry
	}
	if o.NativeDeadLetter {
		ro.MaxAttempts = math.MaxInt32 // the broker decides when to give up
	}
	return ro
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
	var chain []broker.Middleware
	for _, s := range stack {
		if mw := s.build(&opts); mw != nil {
			chain = append(chain, mw)
		}
	}
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

// Check returns an error describing each pair of stages in h's chain whose
// order breaks a guarantee — a stage wrapping one that the documented stack
// puts outside it — or nil. A second recover outermost is fine as long as
// one is innermost; stages Check does not know are ignored.
func Check(h broker.Handler) error {
	st := Stages(h)
	innermostRecover := len(st) > 0 && st[len(st)-1] == "recover"
	var errs []error
	for i, outer := range st {
		ro := rank(outer)
		if ro < 0 || (outer == "recover" && innermostRecover) {
			continue
		}
		for _, inner := range st[i+1:] {
			if ri := rank(inner); ri >= 0 && ri < ro {
				errs = append(errs, fmt.Errorf("middleware: %s wraps %s, but belongs inside it: %s (documented order: %s)",
					outer, inner, stack[ro].inside, order()))
			}
		}
	}
	return errors.Join(errs...)
}

func order() string {
	names := make([]string, len(stack))
	for i, s := range stack {
		names[i] = s.name
	}
	return strings.Join(names, " -> ")
}
