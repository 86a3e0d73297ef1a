package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/semantics"
)

// ConsumeOptions configure Consume. The zero value is at-least-once,
// unordered, one handler at a time.
type ConsumeOptions struct {
	// Guarantee to enforce; default AtLeastOnce.
	Guarantee semantics.Guarantee
	// Ordering: PerKey runs the handlers of one key one at a time in
	// delivery order while other keys run concurrently (per-key dispatch,
	// not a global lock). Messages with an empty key are spread freely.
	Ordering semantics.Ordering
	// Concurrency is how many handlers run at once; default 1.
	Concurrency int
	// NackDelay is the redelivery delay after a handler error that carries
	// none of its own (see RetryAfter); default 0.
	NackDelay time.Duration
	// ShutdownTimeout is how long in-flight handlers may run on after ctx
	// is cancelled before their own context is cancelled too; default 30s.
	ShutdownTimeout time.Duration
	// Idempotency is the store EffectivelyOnce records handled message IDs
	// in (see middleware/dedupe for memory, Redis and PostgreSQL stores).
	// Required for EffectivelyOnce, ignored otherwise.
	Idempotency IdempotencyStore
	// IdempotencyOptions tune the EffectivelyOnce step.
	IdempotencyOptions IdempotencyOptions
	// OnError observes every handler error, panic, and failed Ack or Nack,
	// with the message concerned. Default: a warning through log/slog.
	OnError func(msg *Message, err error)
}

// PanicError is the error a handler's panic turns into: the message is
// nacked (under at-least-once) and the consumer keeps running.
type PanicError struct {
	Value any
	Stack []byte
}

// Error gives the panic value and the stack.
func (e *PanicError) Error() string {
	return fmt.Sprintf("handler panicked: %v\n%s", e.Value, e.Stack)
}

// Consume receives from sub and runs h on each message under the chosen
// guarantee until ctx is cancelled or sub fails.
//
//   - AtLeastOnce: the delivery is acked after h returns nil and nacked
//     (after RetryAfter's delay, or NackDelay) when h fails or panics.
//   - AtMostOnce: the delivery is acked before h runs; a message whose ack
//     fails is not handled; nothing is retried.
//   - EffectivelyOnce: AtLeastOnce with h wrapped by Idempotent, so that a
//     message whose ID was handled already is acked without running h.
//
// When ctx is cancelled Consume stops receiving, lets the handlers already
// running finish (see ShutdownTimeout) and settles them, nacks the deliveries
// it had received but not started, and returns nil. It returns an error when
// sub fails with anything but a transient error, which it retries with
// backoff. Consume does not close sub.
func Consume(ctx context.Context, sub Subscriber, h Handler, opts ConsumeOptions) error {
	const op = "queuekit: consume"
	if sub == nil || h == nil {
		return Errorf(semantics.InvalidArgument, op, "subscriber and handler are required")
	}
	if opts.Concurrency < 0 || opts.ShutdownTimeout < 0 || opts.NackDelay < 0 {
		return Errorf(semantics.InvalidArgument, op, "Concurrency, ShutdownTimeout and NackDelay must not be negative")
	}
	switch opts.Guarantee {
	case semantics.AtLeastOnce, semantics.AtMostOnce:
	case semantics.EffectivelyOnce:
		if opts.Idempotency == nil {
			return Errorf(semantics.InvalidArgument, op, "EffectivelyOnce needs ConsumeOptions.Idempotency (a store from middleware/dedupe)")
		}
		h = Idempotent(opts.Idempotency, opts.IdempotencyOptions)(h)
	default:
		return Errorf(semantics.InvalidArgument, op, "unknown guarantee %v", opts.Guarantee)
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = 1
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = 30 * time.Second
	}
	if opts.OnError == nil {
		opts.OnError = func(m *Message, err error) {
			slog.Warn("queuekit: message not handled cleanly", "topic", m.Topic, "id", m.ID, "attempt", m.Attempt, "error", err)
		}
	}

	// Handlers run on a context that outlives ctx by ShutdownTimeout.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	var grace atomic.Pointer[time.Timer]
	stopWatching := context.AfterFunc(ctx, func() {
		grace.Store(time.AfterFunc(opts.ShutdownTimeout, cancelHandlers))
	})
	defer func() {
		stopWatching()
		if t := grace.Load(); t != nil {
			t.Stop()
		}
	}()

	c := &consumer{h: h, opts: opts, hctx: hctx, stop: ctx.Done()}
	c.start()
	err := c.receiveLoop(ctx, sub)
	c.closeQueues()
	c.wg.Wait()
	return err
}

type consumer struct {
	h      Handler
	opts   ConsumeOptions
	hctx   context.Context
	stop   <-chan struct{} // closed when the caller's ctx is done
	shared chan Delivery   // unordered: all workers take from it
	keyed  []chan Delivery // per-key: worker i takes keys hashed to i
	inline bool            // Concurrency 1: the receive loop runs the handler
	next   int             // round robin for keyless messages under PerKey
	wg     sync.WaitGroup
}

func (c *consumer) start() {
	n := c.opts.Concurrency
	if n == 1 {
		// One handler at a time: the receive loop runs it itself, sparing
		// a goroutine hand-off per message (and keeping delivery order).
		c.inline = true
		return
	}
	if c.opts.Ordering == semantics.PerKey && n > 1 {
		c.keyed = make([]chan Delivery, n)
		for i := range c.keyed {
			c.keyed[i] = make(chan Delivery, 8)
			c.wg.Add(1)
			go c.work(c.keyed[i])
		}
		return
	}
	c.shared = make(chan Delivery, n)
	for i := 0; i < n; i++ {
		c.wg.Add(1)
		go c.work(c.shared)
	}
}

func (c *consumer) closeQueues() {
	if c.shared != nil {
		close(c.shared)
	}
	for _, q := range c.keyed {
		close(q)
	}
}

// receiveLoop runs until ctx is done or sub fails for good.
func (c *consumer) receiveLoop(ctx context.Context, sub Subscriber) error {
	var buf []Delivery
	batch, _ := sub.(BatchReceiver)
	if batch != nil {
		buf = make([]Delivery, max(16, c.opts.Concurrency))
	}
	backoff := 10 * time.Millisecond
	for {
		var n int
		var err error
		if batch != nil {
			n, err = batch.ReceiveBatch(ctx, buf)
		} else {
			var d Delivery
			d, err = sub.Receive(ctx)
			if err == nil {
				buf = append(buf[:0], d)
				n = 1
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if KindOf(err) != semantics.Transient {
				return WrapError(semantics.Unknown, "queuekit: consume: receive", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		for i, d := range buf[:n] {
			buf[i] = nil
			if !c.take(ctx, d) {
				for _, rest := range buf[i+1 : n] {
					c.release(rest)
				}
				return nil
			}
		}
	}
}

// take runs d's handler itself (Concurrency 1) or hands d to a worker. When
// ctx is done first, it releases d and returns false.
func (c *consumer) take(ctx context.Context, d Delivery) bool {
	if !c.inline {
		return c.dispatch(ctx, d)
	}
	if ctx.Err() != nil {
		c.release(d)
		return false
	}
	c.process(d)
	return true
}

// dispatch hands d to a worker, or releases it and returns false when ctx is
// done first.
func (c *consumer) dispatch(ctx context.Context, d Delivery) bool {
	q := c.shared
	if c.keyed != nil {
		key := d.Message().Key
		if key == "" {
			c.next = (c.next + 1) % len(c.keyed)
			q = c.keyed[c.next]
		} else {
			q = c.keyed[fnv32(key)%uint32(len(c.keyed))]
		}
	}
	select { // fast path: a worker has room, no need to watch ctx
	case q <- d:
		return true
	default:
	}
	select {
	case q <- d:
		return true
	case <-ctx.Done():
		c.release(d)
		return false
	}
}

func (c *consumer) work(q <-chan Delivery) {
	defer c.wg.Done()
	for d := range q {
		c.handle(d)
	}
}

// handle processes d, or gives it back when the consumer is stopping.
func (c *consumer) handle(d Delivery) {
	select {
	case <-c.stop:
		c.release(d) // received but not started: give it back
	default:
		c.process(d)
	}
}

// release nacks a delivery that was never handed to the handler.
func (c *consumer) release(d Delivery) {
	if err := d.Nack(c.hctx, 0); err != nil {
		c.opts.OnError(d.Message(), fmt.Errorf("releasing an unhandled delivery at shutdown: %w", err))
	}
}

func (c *consumer) process(d Delivery) {
	m := d.Message()
	if c.opts.Guarantee == semantics.AtMostOnce {
		if err := d.Ack(c.hctx); err != nil {
			c.opts.OnError(m, fmt.Errorf("at-most-once: ack before handling failed, message not handled: %w", err))
			return
		}
		if err := c.call(m); err != nil {
			c.opts.OnError(m, err)
		}
		return
	}
	err := c.call(m)
	if err == nil {
		if aerr := d.Ack(c.hctx); aerr != nil {
			c.opts.OnError(m, fmt.Errorf("ack after handling failed, the message will be redelivered: %w", aerr))
		}
		return
	}
	delay := c.opts.NackDelay
	if rd, ok := RetryDelay(err); ok {
		delay = rd
	}
	c.opts.OnError(m, err)
	if nerr := d.Nack(c.hctx, delay); nerr != nil && !errors.Is(nerr, ErrClosed) {
		c.opts.OnError(m, fmt.Errorf("nack failed: %w", nerr))
	}
}

// call runs the handler, turning a panic into a *PanicError.
func (c *consumer) call(m *Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return c.h.Handle(c.hctx, m)
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
