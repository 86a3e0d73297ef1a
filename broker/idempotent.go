package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ClaimResult is the answer of an IdempotencyStore to a claim.
type ClaimResult int

const (
	// Claimed: the caller holds the claim and should handle the message.
	Claimed ClaimResult = iota
	// AlreadyDone: the message was handled before; skip it.
	AlreadyDone
	// InFlight: another consumer holds an unexpired claim; try later.
	InFlight
)

// IdempotencyStore records which message keys were handled. A claim is a
// lease, not a mark: a consumer that dies while holding one does not lose the
// message, because the lease expires and the redelivery claims it again.
// This is what the naive "SETNX then handle" gets wrong.
type IdempotencyStore interface {
	// Claim tries to take key for lease.
	Claim(ctx context.Context, key string, lease time.Duration) (ClaimResult, error)
	// Complete marks key handled, for good (or for the store's retention).
	Complete(ctx context.Context, key string) error
	// Release drops a claim after a failed attempt so a redelivery can
	// claim it at once.
	Release(ctx context.Context, key string) error
}

// IdempotencyOptions tune Idempotent.
type IdempotencyOptions struct {
	// Lease is how long a claim holds before another consumer may take
	// over; longer than the slowest handler. Default 30s.
	Lease time.Duration
	// InFlightDelay is the redelivery delay of a copy that arrives while
	// another copy is in flight. Default 1s.
	InFlightDelay time.Duration
	// Key returns the idempotency key of a message; default its ID.
	// Messages with an empty key are handled without deduplication.
	Key func(*Message) string
	// OnDuplicate observes each message skipped as already handled.
	OnDuplicate func(*Message)
}

// ErrInFlight is the error (with a RetryAfter delay) for a message whose
// other copy is being handled right now.
var ErrInFlight = errors.New("another copy of this message is in flight")

// Idempotent makes h run at most once per key to completion: it claims the
// key with a lease, runs h, then marks the key done (or releases the claim
// when h failed, so the redelivery is handled). A copy that arrives while
// another is in flight is redelivered later rather than handled twice.
//
// If marking done fails after h succeeded, the message is nacked and may be
// handled again once the lease expires: only an inbox that commits the mark
// in the handler's own transaction closes that gap (see middleware/dedupe).
func Idempotent(store IdempotencyStore, opts IdempotencyOptions) Middleware {
	if opts.Lease <= 0 {
		opts.Lease = 30 * time.Second
	}
	if opts.InFlightDelay <= 0 {
		opts.InFlightDelay = time.Second
	}
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, m *Message) error {
			key := m.ID
			if opts.Key != nil {
				key = opts.Key(m)
			}
			if key == "" {
				return next.Handle(ctx, m)
			}
			res, err := store.Claim(ctx, key, opts.Lease)
			if err != nil {
				return fmt.Errorf("idempotency claim %s: %w", key, err)
			}
			switch res {
			case AlreadyDone:
				if opts.OnDuplicate != nil {
					opts.OnDuplicate(m)
				}
				return nil
			case InFlight:
				return RetryAfter(ErrInFlight, opts.InFlightDelay)
			}
			if herr := next.Handle(ctx, m); herr != nil {
				if rerr := store.Release(context.WithoutCancel(ctx), key); rerr != nil {
					return errors.Join(herr, fmt.Errorf("idempotency release %s: %w", key, rerr))
				}
				return herr
			}
			if cerr := store.Complete(context.WithoutCancel(ctx), key); cerr != nil {
				return fmt.Errorf("idempotency complete %s: %w", key, cerr)
			}
			return nil
		})
	}
}
