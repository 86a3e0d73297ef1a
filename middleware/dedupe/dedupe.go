// Package dedupe is the idempotent consumer: a middleware that handles each
// message at most once to completion, keyed by message ID (or a key
// function), over a store that records which keys were handled.
//
// It builds on broker.Idempotent and its store contract,
// broker.IdempotencyStore: a key is claimed with a lease, marked done only
// after the handler succeeded, and released when the handler failed — only
// the claim that handler holds (its token), never the claim of a copy that
// took the key over after the lease expired. That closes both holes of the
// naive "SETNX id, then handle":
//
//   - a consumer that crashes after claiming does not lose the message: the
//     lease expires and the redelivery is handled;
//   - a duplicate delivered while the first copy is still in flight is not
//     handled a second time: it is nacked with a delay
//     (broker.ErrInFlight) and, when it comes back, finds the key done.
//
// When the store fails (down, unreachable, hung past the handler's ctx), the
// message is nacked with a delay that grows while the failures go on, so an
// outage costs a few redeliveries per message rather than a storm.
//
// Stores: MemoryStore here (bounded, with a TTL; one process only), Redis in
// dedupe/redisstore (SET NX PX, key prefix "evt:"), PostgreSQL in
// dedupe/pgstore (a unique-key table, and an inbox that commits the mark in
// the handler's own transaction, which also closes the last gap: a crash
// between the handler's commit and the mark).
//
// Every store implements broker.IdempotencyStore, so it also serves as
// broker.ConsumeOptions.Idempotency for semantics.EffectivelyOnce. Prefer
// this middleware inside the dlq middleware (dlq -> retry -> dedupe ->
// handler): Consume puts its idempotency step outermost, where a message
// that dlq dead-letters counts as handled and its redriven copy would be
// skipped. Wrapping a dlq handler with dedupe panics for that reason.
package dedupe

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Options tune the middleware; they extend broker.IdempotencyOptions.
type Options struct {
	// Lease is how long a claim holds before another consumer may take
	// the key over; longer than the slowest handler (with its in-process
	// retries). Default 30s.
	Lease time.Duration
	// InFlightDelay is the redelivery delay of a copy that arrives while
	// another copy is in flight. Default 1s.
	InFlightDelay time.Duration
	// StoreErrorDelay is the redelivery delay after the store failed,
	// doubled with each consecutive failure up to MaxStoreErrorDelay (see
	// broker.IdempotencyOptions). Default 100ms.
	StoreErrorDelay time.Duration
	// MaxStoreErrorDelay caps StoreErrorDelay's growth; default 5s.
	MaxStoreErrorDelay time.Duration
	// Key returns a message's idempotency key; default its ID. A message
	// with an empty key is handled without deduplication.
	Key func(*broker.Message) string
	// OnDuplicate observes each message skipped as already handled.
	OnDuplicate func(*broker.Message)
	// Stats, when set, counts what the middleware did.
	Stats *Stats
}

// Stats counts the middleware's decisions; read it with Snapshot. It is
// safe for concurrent use.
type Stats struct {
	handled, duplicates, inFlight atomic.Int64
}

// StatsSnapshot is a copy of Stats.
type StatsSnapshot struct {
	// Handled: messages the handler ran on successfully.
	Handled int64
	// Duplicates: messages skipped because their key was done.
	Duplicates int64
	// InFlight: copies deferred because another copy held the claim.
	InFlight int64
}

// Snapshot returns the counts so far.
func (s *Stats) Snapshot() StatsSnapshot {
	return StatsSnapshot{Handled: s.handled.Load(), Duplicates: s.duplicates.Load(), InFlight: s.inFlight.Load()}
}

// New returns the idempotent-consumer middleware over store: broker.Idempotent
// with Options' extras. It panics when store is nil, or when it wraps a
// chain that contains the dlq middleware (see the package doc).
func New(store broker.IdempotencyStore, opts Options) broker.Middleware {
	if store == nil {
		panic("dedupe: store is nil")
	}
	io := broker.IdempotencyOptions{
		Lease: opts.Lease, InFlightDelay: opts.InFlightDelay, Key: opts.Key, OnDuplicate: opts.OnDuplicate,
		StoreErrorDelay: opts.StoreErrorDelay, MaxStoreErrorDelay: opts.MaxStoreErrorDelay,
	}
	if st := opts.Stats; st != nil {
		user := opts.OnDuplicate
		io.OnDuplicate = func(m *broker.Message) {
			st.duplicates.Add(1)
			if user != nil {
				user(m)
			}
		}
	}
	idem := broker.Idempotent(store, io)
	return func(next broker.Handler) broker.Handler {
		mustNotWrapDLQ(next)
		inner := next
		if st := opts.Stats; st != nil {
			inner = broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				err := next.Handle(ctx, m)
				if err == nil {
					st.handled.Add(1)
				}
				return err
			})
		}
		return &handler{next: next, idem: idem(inner), stats: opts.Stats}
	}
}

type handler struct {
	next  broker.Handler // for Layer: the chain below
	idem  broker.Handler
	stats *Stats
}

// Stage names this middleware for middleware.Check.
func (h *handler) Stage() string { return "dedupe" }

// Unwrap returns the handler dedupe wraps.
func (h *handler) Unwrap() broker.Handler { return h.next }

// mustNotWrapDLQ panics when next's chain holds the dlq middleware: a
// dead-lettered message would be recorded as handled and its redriven copy
// skipped. It walks handlers that have Unwrap, as middleware.Check does.
func mustNotWrapDLQ(next broker.Handler) {
	for h := next; h != nil; {
		if s, ok := h.(interface{ Stage() string }); ok && s.Stage() == "dlq" {
			panic("dedupe: must not wrap the dlq middleware: a dead-lettered message would be recorded as handled and its redriven copy skipped; order the chain dlq -> retry -> dedupe -> handler")
		}
		u, ok := h.(interface{ Unwrap() broker.Handler })
		if !ok {
			return
		}
		h = u.Unwrap()
	}
}

func (h *handler) Handle(ctx context.Context, m *broker.Message) error {
	err := h.idem.Handle(ctx, m)
	if err != nil && h.stats != nil && errors.Is(err, broker.ErrInFlight) {
		h.stats.inFlight.Add(1)
	}
	return err
}
