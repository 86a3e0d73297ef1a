package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
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
//
// Every successful claim has a token of its own, which the store makes up
// and the claimant hands back to Complete or Release. A lease can expire
// while its handler still runs, and another handler (in this process or
// another) take the key over: the token tells the late handler's calls
// apart from the new holder's, so that the late handler's failure never
// frees the key while the new holder runs.
//
// The methods are safe for concurrent use, return when ctx ends, and report
// a store that cannot be reached as a Transient error (see KindOf).
type IdempotencyStore interface {
	// Claim tries to take key for lease. When the result is Claimed,
	// token identifies this claim (it is not empty); otherwise it is "".
	Claim(ctx context.Context, key string, lease time.Duration) (res ClaimResult, token string, err error)
	// Complete marks key handled, for good (or for the store's retention),
	// after the handler holding the claim token succeeded. It marks key
	// done even when that claim has expired and another holds the key now:
	// the work was done, so every later copy must be skipped — including
	// a copy that would otherwise run after the new holder fails and
	// releases. (Refusing instead would leave key claimable again, so the
	// work would run a second time to completion.) The new holder's
	// handler, still running, finishes; its Complete or Release then finds
	// key done and leaves it done.
	Complete(ctx context.Context, key, token string) error
	// Release drops the claim token after a failed attempt so that a
	// redelivery can claim key at once. It acts only on that claim: when
	// the lease has expired and key was taken over since, or key is done,
	// Release changes nothing and returns nil.
	Release(ctx context.Context, key, token string) error
}

// IdempotencyOptions tune Idempotent.
type IdempotencyOptions struct {
	// Lease is how long a claim holds before another consumer may take
	// over; longer than the slowest handler. Default 30s. It also bounds
	// the Complete or Release that follows the handler.
	Lease time.Duration
	// InFlightDelay is the redelivery delay of a copy that arrives while
	// another copy is in flight. Default 1s.
	InFlightDelay time.Duration
	// StoreErrorDelay is the redelivery delay of a message whose Claim,
	// Complete or Release failed (the store is down or overloaded): the
	// error Idempotent returns carries it (see RetryAfter). It doubles with
	// every consecutive store failure, up to MaxStoreErrorDelay, and starts
	// again from StoreErrorDelay once the store calls for a message all
	// succeed. Consecutive failures are counted across all the messages a
	// middleware value handles, so that during an outage every message
	// backs off, not each on its own. Default 100ms.
	StoreErrorDelay time.Duration
	// MaxStoreErrorDelay caps StoreErrorDelay's growth; default 5s.
	MaxStoreErrorDelay time.Duration
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
// key with a lease, runs h, then marks the key done (or releases its claim
// when h failed, so the redelivery is handled). A copy that arrives while
// another is in flight is redelivered later rather than handled twice. A
// store failure is returned with a redelivery delay that grows while the
// store keeps failing (see IdempotencyOptions.StoreErrorDelay), so that an
// outage does not turn into a storm of redeliveries.
//
// Complete and Release run even when ctx was cancelled meanwhile (a handler
// that finished at shutdown still records its outcome), for at most Lease.
//
// If marking done fails after h succeeded, the message is nacked and may be
// handled again once the lease expires: only an inbox that commits the mark
// in the handler's own transaction closes that gap (see middleware/dedupe).
// Options that are zero or negative take their defaults.
func Idempotent(store IdempotencyStore, opts IdempotencyOptions) Middleware {
	opts = opts.withDefaults()
	b := opts.backoff()
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, m *Message) error {
			key := m.ID
			if opts.Key != nil {
				key = opts.Key(m)
			}
			if key == "" {
				return next.Handle(ctx, m)
			}
			res, token, err := store.Claim(ctx, key, opts.Lease)
			if err != nil {
				return RetryAfter(fmt.Errorf("idempotency claim %s: %w", key, err), b.failed())
			}
			switch res {
			case AlreadyDone:
				b.succeeded()
				if opts.OnDuplicate != nil {
					opts.OnDuplicate(m)
				}
				return nil
			case InFlight:
				b.succeeded()
				return RetryAfter(ErrInFlight, opts.InFlightDelay)
			}
			herr := next.Handle(ctx, m)
			sctx := newSettleContext(ctx, opts.Lease)
			defer sctx.cancel()
			if herr != nil {
				if rerr := store.Release(sctx, key, token); rerr != nil {
					d := b.failed()
					if hd, ok := RetryDelay(herr); ok {
						d = max(d, hd)
					}
					return RetryAfter(errors.Join(herr, fmt.Errorf("idempotency release %s: %w", key, rerr)), d)
				}
				b.succeeded()
				return herr
			}
			if cerr := store.Complete(sctx, key, token); cerr != nil {
				return RetryAfter(fmt.Errorf("idempotency complete %s: %w", key, cerr), b.failed())
			}
			b.succeeded()
			return nil
		})
	}
}

// storeBackoff counts consecutive store failures and turns them into
// redelivery delays.
type storeBackoff struct {
	base, limit time.Duration
	fails       atomic.Int64
}

// failed counts a failure and returns base doubled once per earlier
// consecutive failure, at most limit.
func (b *storeBackoff) failed() time.Duration {
	n := b.fails.Add(1) - 1
	d := b.base
	for ; n > 0 && d < b.limit; n-- {
		d *= 2
	}
	return min(d, b.limit)
}

// succeeded ends a run of failures.
func (b *storeBackoff) succeeded() {
	if b.fails.Load() != 0 {
		b.fails.Store(0)
	}
}

// settleContext is what Complete and Release run on: the handler's context
// without its cancellation, ending after a timeout instead. It is what
// context.WithTimeout(context.WithoutCancel(ctx), d) gives, except that the
// clock starts when the store first asks for Deadline, Done or Err — at the
// start of its call: a store that never waits (the memory store) costs one
// allocation per message, and neither a lock, a clock reading nor a timer.
type settleContext struct {
	parent  context.Context // for values only
	timeout time.Duration
	state   atomic.Uint32 // fresh, started or ended

	mu       sync.Mutex
	deadline time.Time     // set by start
	done     chan struct{} // made by start
	err      error         // set when done is closed
	timer    *time.Timer
}

const (
	fresh   = iota // nobody asked: no deadline, channel or timer yet
	started        // the timer runs
	ended          // cancelled before it started
)

func newSettleContext(parent context.Context, timeout time.Duration) *settleContext {
	return &settleContext{parent: parent, timeout: timeout}
}

// Deadline returns the end of the timeout.
func (c *settleContext) Deadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start()
	return c.deadline, !c.deadline.IsZero()
}

// Value returns the parent's values.
func (c *settleContext) Value(key any) any { return c.parent.Value(key) }

// Done returns a channel closed at the deadline or on cancel.
func (c *settleContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start()
	return c.done
}

// Err returns context.DeadlineExceeded or context.Canceled once Done is
// closed, nil before.
func (c *settleContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start()
	return c.err
}

// start sets the deadline and makes done with the timer that closes it,
// once. The caller holds c.mu.
func (c *settleContext) start() {
	if c.done != nil {
		return
	}
	if !c.state.CompareAndSwap(fresh, started) { // cancelled before anyone asked
		c.done, c.err = closedChan, context.Canceled
		return
	}
	c.deadline = time.Now().Add(c.timeout)
	c.done = make(chan struct{})
	c.timer = time.AfterFunc(c.timeout, func() { c.end(context.DeadlineExceeded) })
}

// end closes done with err, unless it is closed already, and returns the
// timer to stop.
func (c *settleContext) end(err error) *time.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
	return c.timer
}

// cancel ends the context once the store call returned, and stops its timer.
func (c *settleContext) cancel() {
	if c.state.CompareAndSwap(fresh, ended) {
		return // nobody asked: there is nothing to close or stop
	}
	if t := c.end(context.Canceled); t != nil {
		t.Stop()
	}
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

func (c *settleContext) String() string { return "queuekit.settleContext" }

// withDefaults gives zero or negative options their defaults (Idempotent
// and ConsumeBatch's idempotency share them).
func (opts IdempotencyOptions) withDefaults() IdempotencyOptions {
	if opts.Lease <= 0 {
		opts.Lease = 30 * time.Second
	}
	if opts.InFlightDelay <= 0 {
		opts.InFlightDelay = time.Second
	}
	if opts.StoreErrorDelay <= 0 {
		opts.StoreErrorDelay = 100 * time.Millisecond
	}
	if opts.MaxStoreErrorDelay <= 0 {
		opts.MaxStoreErrorDelay = 5 * time.Second
	}
	opts.MaxStoreErrorDelay = max(opts.MaxStoreErrorDelay, opts.StoreErrorDelay)
	return opts
}

// backoff is the delay policy for store errors under opts.
func (opts IdempotencyOptions) backoff() *storeBackoff {
	return &storeBackoff{base: opts.StoreErrorDelay, limit: opts.MaxStoreErrorDelay}
}
