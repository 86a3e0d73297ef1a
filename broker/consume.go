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

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/keytab"
	"github.com/queuekit/queuekit/semantics"
)

// ConsumeOptions configure Consume. The zero value runs one handler at a
// time. The guarantee and the ordering are the subscriber's, declared once
// in SubscriberOptions.
type ConsumeOptions struct {
	// Concurrency is how many handlers run at once; default 1.
	Concurrency int
	// NackDelay is the redelivery delay after a handler error that carries
	// none of its own (see RetryAfter); default 0.
	NackDelay time.Duration
	// ShutdownTimeout is how long in-flight handlers may run on after ctx
	// is cancelled before their own context is cancelled too; default 30s.
	ShutdownTimeout time.Duration
	// Idempotency is the store an EffectivelyOnce subscription records
	// handled message IDs in (see middleware/dedupe for memory, Redis and
	// PostgreSQL stores). Required for EffectivelyOnce, refused otherwise.
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

// Consume receives from sub and runs h on each message under the guarantee
// and ordering sub was declared with, until ctx is cancelled or sub fails.
//
//   - AtLeastOnce: the delivery is acked after h returns nil and nacked
//     (after RetryAfter's delay, or NackDelay) when h fails or panics.
//   - AtMostOnce: the delivery is acked before h runs; a message whose ack
//     fails is not handled; nothing is retried.
//   - EffectivelyOnce: AtLeastOnce with h wrapped by Idempotent, so that a
//     message whose ID was handled already is acked without running h.
//
// With PerKey ordering, the handlers of one key run one at a time in
// delivery order while other keys run concurrently (per-key dispatch, not a
// global lock); messages with an empty key are spread freely. A failed
// message keeps its key: it is retried in place after its nack delay (with
// Attempt one higher) while the key's later messages wait, until it
// succeeds, Attempt reaches the subscription's MaxAttempts (then it is
// nacked, for the broker or the dlq middleware to dead-letter), or Consume
// stops (then it is nacked). Other keys go on meanwhile, as long as the
// deliveries waiting behind held keys leave room in Consume's buffer of
// received deliveries (max(16, Concurrency), or Concurrency where the
// adapter receives one delivery per call).
//
// When ctx is cancelled Consume stops receiving, lets the handlers already
// running finish (see ShutdownTimeout) and settles them, nacks the deliveries
// it had received but not started, and returns nil. It returns an error when
// sub fails with anything but a transient error, which it retries with
// backoff. Consume does not close sub.
func Consume(ctx context.Context, sub *Subscriber, h Handler, opts ConsumeOptions) error {
	const op = "queuekit: consume"
	if isNil(h) {
		return Errorf(semantics.InvalidArgument, op, "subscriber and handler are required (a nil HandlerFunc too)")
	}
	rc, err := startRun(ctx, op, sub, &opts)
	if err != nil {
		return err
	}
	defer rc.end()
	if rc.guarantee == semantics.EffectivelyOnce {
		h = Idempotent(opts.Idempotency, opts.IdempotencyOptions)(h)
	}
	c := &consumer{run: rc, h: h, opts: opts}
	return c.start(ctx)
}

// run is what Consume and ConsumeBatch share for one call: the options
// checked, the contexts of handlers and settlements, and the shutdown grace.
type run struct {
	sub       *Subscriber
	guarantee semantics.Guarantee
	ordering  semantics.Ordering
	// maxAttempts is the subscription's MaxAttempts: in-place retries
	// under PerKey stop there and give the message back to the broker.
	maxAttempts int
	hctx        context.Context // handlers': ctx, cancelled ShutdownTimeout after it
	sctx        context.Context // settles deliveries: never cancelled, so a late settle still reaches the broker
	stop        <-chan struct{} // closed when the caller's ctx is done
	onError     func(*Message, error)
	nackDelay   time.Duration
	end         func()
}

// startRun checks sub and opts and fills in opts' defaults. The caller
// calls end once its handlers have returned.
func startRun(ctx context.Context, op string, sub *Subscriber, opts *ConsumeOptions) (*run, error) {
	if sub == nil {
		return nil, Errorf(semantics.InvalidArgument, op, "subscriber and handler are required (a nil HandlerFunc too)")
	}
	if ctx == nil {
		return nil, Errorf(semantics.InvalidArgument, op, "nil context")
	}
	if opts.Concurrency < 0 || opts.ShutdownTimeout < 0 || opts.NackDelay < 0 {
		return nil, Errorf(semantics.InvalidArgument, op, "Concurrency, ShutdownTimeout and NackDelay must not be negative")
	}
	guarantee := sub.opts.Guarantee
	switch {
	case guarantee == semantics.EffectivelyOnce && opts.Idempotency == nil:
		return nil, Errorf(semantics.InvalidArgument, op, "an EffectivelyOnce subscription needs ConsumeOptions.Idempotency (a store from middleware/dedupe)")
	case guarantee != semantics.EffectivelyOnce && opts.Idempotency != nil:
		return nil, Errorf(semantics.InvalidArgument, op, "ConsumeOptions.Idempotency is set but the subscription is %v: declare SubscriberOptions.Guarantee EffectivelyOnce", guarantee)
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
	var grace atomic.Pointer[time.Timer]
	stopWatching := context.AfterFunc(ctx, func() {
		grace.Store(time.AfterFunc(opts.ShutdownTimeout, cancelHandlers))
	})
	return &run{
		sub: sub, guarantee: guarantee, ordering: sub.opts.Ordering, maxAttempts: sub.opts.MaxAttempts,
		hctx: hctx, sctx: context.WithoutCancel(ctx), stop: ctx.Done(),
		onError: opts.OnError, nackDelay: opts.NackDelay,
		end: func() {
			stopWatching()
			if t := grace.Load(); t != nil {
				t.Stop()
			}
			cancelHandlers()
		},
	}, nil
}

// stopping reports whether the caller's ctx is done.
func (r *run) stopping() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

// delayOf is the redelivery delay of a message that failed with err.
func (r *run) delayOf(err error) time.Duration {
	if rd, ok := RetryDelay(err); ok {
		return rd
	}
	return r.nackDelay
}

// settle acks d, or nacks it after delay, through the subscriber (see
// Subscriber.settle: after its Close, ErrClosed without asking the driver),
// on a context that outlives the caller's, so that a late settlement still
// reaches the broker.
func (r *run) settle(d driver.Delivery, nack bool, delay time.Duration) error {
	return r.sub.settle(r.sctx, d, nack, delay)
}

// release nacks a delivery that was never handed to the handler. After the
// subscriber's Close the broker has it back already: nothing to report.
func (r *run) release(d driver.Delivery) {
	if err := r.settle(d, true, 0); err != nil && !errors.Is(err, ErrClosed) {
		r.onError(d.Message(), fmt.Errorf("releasing an unhandled delivery at shutdown: %w", err))
	}
}

// ack acks d after its message was handled.
func (r *run) ack(d driver.Delivery, m *Message) {
	if err := r.settle(d, false, 0); err != nil {
		r.onError(m, fmt.Errorf("ack after handling failed, the message will be redelivered: %w", err))
	}
}

// ackFirst acks d before its message is handled, under AtMostOnce: false
// (reported) means the message must not be handled.
func (r *run) ackFirst(d driver.Delivery, m *Message) bool {
	if err := r.settle(d, false, 0); err != nil {
		r.onError(m, fmt.Errorf("at-most-once: ack before handling failed, message not handled: %w", err))
		return false
	}
	return true
}

// nack reports err, the reason m failed, and asks for its redelivery.
func (r *run) nack(d driver.Delivery, m *Message, err error) {
	delay := r.delayOf(err)
	r.onError(m, err)
	if nerr := r.settle(d, true, delay); nerr != nil && !errors.Is(nerr, ErrClosed) {
		r.onError(m, fmt.Errorf("nack failed: %w", nerr))
	}
}

// consumer runs Concurrency workers over the deliveries of one subscriber.
// There is no receive goroutine: a worker that finds nothing to start
// receives a batch itself (one worker at a time), starts the first
// delivery and leaves the rest queued for the others, waking one of them
// when there is more to do. A delivery thus goes from the broker to its
// handler without a hand-off between goroutines when the others are busy.
//
// With Concurrency 1 there are no workers: serial handles each batch in
// place.
//
// It settles each driver delivery exactly once by construction (the
// handler never sees the delivery), so it needs no settlement state.
type consumer struct {
	*run
	h    Handler
	opts ConsumeOptions

	mu    sync.Mutex
	ready itemRing // received, not started, in delivery order
	// inPlace: unless prefetching, a batch is only received once the last
	// one is all started or waiting behind its key, so the ready
	// deliveries are c.buf[next:end], taken in place rather than queued in
	// ready (only those that wait behind a key are copied, into the key's
	// queue), and the buffer is cleared once per batch.
	inPlace   bool
	next, end int
	keys      *keyTable // PerKey with Concurrency > 1: keys being handled
	held      int       // deliveries in ready or waiting behind their key
	limit     int       // most deliveries held: a worker receives no more
	buf       []driver.Delivery
	// hashes: inPlace under PerKey, the hashes of the keys of buf's
	// deliveries, computed by the receiving worker before it takes the lock.
	hashes    []uint64
	receiving bool // a worker is receiving (always, when prefetching)
	prefetch  bool // a goroutine of its own receives (see run)
	// roomWake wakes the prefetching receiver, waiting for room when
	// roomWaiting.
	roomWake    chan struct{}
	roomWaiting bool
	recvDone    bool // receiving is over (ctx done or sub failed)
	err         error
	idle        waitList
	wg          sync.WaitGroup
}

func (c *consumer) start(ctx context.Context) error {
	n := c.opts.Concurrency
	c.limit = max(16, n)
	c.buf = make([]driver.Delivery, c.limit)
	if n == 1 {
		// One handler at a time keeps every order by itself, and needs
		// neither the ready queue nor the lock: see serial.
		c.serial(ctx)
		return c.err
	}
	if c.ordering == semantics.PerKey {
		c.keys = newKeyTable()
	}
	c.inPlace = c.sub.batch != nil
	if c.inPlace && c.keys != nil {
		c.hashes = make([]uint64, len(c.buf))
	}
	if c.sub.batch == nil {
		// The adapter hands out one delivery per call: a goroutine of its
		// own keeps up to Concurrency of them ready, so that handlers do
		// not wait on the broker's round trip (and take no more from a
		// group whose other subscribers may be idle).
		c.prefetch, c.receiving, c.limit = true, true, n
		c.roomWake = make(chan struct{}, 1)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.prefetchLoop(ctx)
		}()
	}
	c.wg.Add(n - 1)
	for range n - 1 {
		go func() {
			defer c.wg.Done()
			c.work(ctx)
		}()
	}
	c.work(ctx)
	c.wg.Wait()
	return c.err
}

// prefetchLoop receives until receiving is over, keeping at most limit
// deliveries held.
func (c *consumer) prefetchLoop(ctx context.Context) {
	c.mu.Lock()
	for !c.recvDone {
		if c.held >= c.limit {
			if ctx.Err() != nil {
				c.mu.Unlock()
				c.endReceiving(nil)
				return
			}
			c.roomWaiting = true
			c.mu.Unlock()
			select {
			case <-c.roomWake:
			case <-ctx.Done():
			}
			c.mu.Lock()
			c.roomWaiting = false
			continue
		}
		c.mu.Unlock()
		c.receive(ctx)
		c.mu.Lock()
	}
	c.mu.Unlock()
}

// work starts deliveries until receiving is over and none is left.
func (c *consumer) work(ctx context.Context) {
	wake := make(chan struct{}, 1)
	var it item // filled in place by nextLocked and doneLocked
	c.mu.Lock()
	for {
		if c.nextLocked(&it) {
			c.mu.Unlock()
			for {
				c.handle(it)
				c.mu.Lock()
				if !c.doneLocked(&it) {
					break
				}
				c.mu.Unlock()
			}
			continue
		}
		if !c.receiving && !c.recvDone && c.held < c.limit {
			c.receiving = true
			c.mu.Unlock()
			c.receive(ctx)
			c.mu.Lock()
			continue
		}
		if c.recvDone {
			// Nothing ready and nothing coming: what waits behind a key
			// is started by the worker that holds the key.
			c.idle.wakeAll()
			c.mu.Unlock()
			return
		}
		c.idle.add(wake)
		c.mu.Unlock()
		<-wake
		c.mu.Lock()
	}
}

// nextLocked takes into it the first ready delivery that may start (under
// PerKey, one whose key no handler holds), moving those that may not behind
// their key, and reports whether there was one. It wakes another worker
// when there is more to do. (It and doneLocked fill the worker's item in
// place: returned, an item is copied out and back at each call.)
func (c *consumer) nextLocked(it *item) bool {
	for {
		switch {
		case c.inPlace:
			if c.next == c.end {
				return false
			}
			d, i := c.buf[c.next], c.next
			if c.next++; c.next == c.end {
				clear(c.buf[:c.end])
				c.next, c.end = 0, 0
			}
			if c.keys == nil {
				c.held--
				c.kickLocked()
				*it = item{d: d} // handle asks d for its message
				return true
			}
			// Not started yet, so no handler has had a chance to change
			// its Key: this is the key it was received with.
			m := d.Message()
			*it = item{d: d, m: m, key: m.Key, hash: c.hashes[i]}
		case c.ready.n > 0:
			*it = c.ready.popFront()
		default:
			return false
		}
		if c.keys != nil && it.key != "" {
			i, held := c.keys.Find(it.key, it.hash)
			if held {
				c.keys.stateAt(i).waiting.pushBack(*it)
				*it = item{}
				continue
			}
			c.keys.holdAt(i, it.key, it.hash)
		}
		c.held--
		c.kickLocked()
		return true
	}
}

// doneLocked ends it: under PerKey it replaces it with the key's next
// delivery, to start at once (the key stays held), and reports true; or
// lets the key go, and empties it.
func (c *consumer) doneLocked(it *item) bool {
	if c.keys == nil || it.key == "" {
		*it = item{}
		return false
	}
	i, _ := c.keys.Find(it.key, it.hash) // held: it holds it
	if ks := c.keys.At(i).Val; ks != nil && ks.waiting.n > 0 {
		c.held--
		c.kickLocked()
		*it = ks.waiting.popFront()
		return true
	}
	c.keys.dropAt(i)
	*it = item{}
	return false
}

// kickLocked wakes an idle worker when there is a delivery to start or
// room to receive and nobody receiving, and the prefetching receiver when
// it waits for room.
func (c *consumer) kickLocked() {
	if c.idle.len() > 0 && (c.ready.n > 0 || c.next < c.end || !c.receiving && !c.recvDone && c.held < c.limit) {
		c.idle.wakeOne()
	}
	if c.roomWaiting && c.held < c.limit {
		c.roomWaiting = false
		c.roomWake <- struct{}{}
	}
}

// receive fills the ready queue with one batch from the subscriber; the
// caller has set c.receiving (for good when prefetching). It ends
// receiving when fetch says it is over.
func (c *consumer) receive(ctx context.Context) {
	n, ok, err := c.fetch(ctx, func() []driver.Delivery {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.buf[:min(len(c.buf), c.limit-c.held)]
	})
	if !ok {
		c.endReceiving(err)
		return
	}
	if c.hashes != nil {
		// Before the lock: no other worker reads c.hashes until next and
		// end say so. (Hashes only: a pointer-free array costs no write
		// barrier while the garbage collector marks.)
		for i, d := range c.buf[:n] {
			c.hashes[i] = 0
			if k := d.Message().Key; k != "" {
				c.hashes[i] = keytab.Hash(k)
			}
		}
	}
	c.mu.Lock()
	if c.inPlace {
		c.next, c.end = 0, n
	} else {
		for i, d := range c.buf[:n] {
			c.buf[i] = nil
			c.ready.pushBack(newItem(d, c.keys))
		}
	}
	c.held += n
	if c.prefetch {
		c.kickLocked()
	} else {
		c.receiving = false // the caller starts the first, waking another worker for the rest
	}
	c.mu.Unlock()
}

// fetch receives one batch from the subscriber into room(), asked again
// for each attempt. It retries transient failures with backoff, and returns
// false when receiving is over: ctx is done (err nil), or sub failed for
// good (err says why).
func (c *consumer) fetch(ctx context.Context, room func() []driver.Delivery) (n int, ok bool, err error) {
	backoff := 10 * time.Millisecond
	for {
		if ctx.Err() != nil {
			// Stopping: receive nothing more (a delivery received now would
			// only be given back, costing it an attempt).
			return 0, false, nil
		}
		n, err := c.sub.receiveBatch(ctx, room())
		if err == nil {
			return n, true, nil
		}
		if ctx.Err() != nil {
			return 0, false, nil
		}
		if KindOf(err) != semantics.Transient {
			return 0, false, WrapError(semantics.Unknown, "queuekit: consume: receive", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// serial is the consumer of Concurrency 1: it handles each batch straight
// from the buffer it was received into, in order, and clears the buffer
// once per batch. With one handler at a time there is nobody to hand a
// delivery to, so it takes no lock and queues nothing; a delivery not yet
// started when ctx is cancelled is given back, as by the workers.
func (c *consumer) serial(ctx context.Context) {
	buf := c.buf
	for {
		n, ok, err := c.fetch(ctx, func() []driver.Delivery { return buf })
		if !ok {
			c.err = err
			return
		}
		ds := buf[:n]
		for i, d := range ds {
			if c.stopping() {
				for _, d := range ds[i:] {
					c.release(d) // received but not started: give it back
				}
				break
			}
			c.process(d, d.Message())
		}
		clear(ds)
	}
}

// endReceiving records that nothing more will be received, and why.
func (c *consumer) endReceiving(err error) {
	c.mu.Lock()
	c.receiving, c.recvDone, c.err = false, true, err
	c.idle.wakeAll()
	c.mu.Unlock()
}

// handle processes it, or gives it back when the consumer is stopping.
func (c *consumer) handle(it item) {
	if c.stopping() {
		c.release(it.d) // received but not started: give it back
		return
	}
	m := it.m
	if m == nil {
		m = it.d.Message()
	}
	c.process(it.d, m)
}

func (c *consumer) process(d driver.Delivery, m *Message) {
	if c.guarantee == semantics.AtMostOnce {
		if !c.ackFirst(d, m) {
			return
		}
		if err := c.call(m); err != nil {
			c.onError(m, err)
		}
		return
	}
	err := c.call(m)
	if err != nil && c.ordering == semantics.PerKey {
		err = c.retryInPlace(m, err)
	}
	if err == nil {
		c.ack(d, m)
		return
	}
	c.nack(d, m, err)
}

// In-place retries with no delay of their own back off from
// minInPlaceDelay to maxInPlaceDelay, so that a message that always fails
// does not spin.
const (
	minInPlaceDelay = 10 * time.Millisecond
	maxInPlaceDelay = time.Second
)

// retryInPlace keeps a failed message's key under PerKey ordering: instead
// of nacking it — after which the broker may hand out the key's later
// messages first, or this consumer may already hold them — it waits the
// nack delay and runs the handler again, with Attempt one higher, while the
// key's later messages wait behind it. It gives the message back (returns
// the last error, for a nack) once Attempt reaches the subscription's
// MaxAttempts, so that dead-lettering still happens, or when Consume stops.
func (c *consumer) retryInPlace(m *Message, err error) error {
	backoff := minInPlaceDelay
	for {
		if c.maxAttempts > 0 && m.Attempt >= c.maxAttempts {
			return err
		}
		var delay time.Duration
		delay, backoff = c.inPlaceDelay(err, backoff)
		c.onError(m, fmt.Errorf("retrying in place after %v to keep the key's order: %w", delay, err))
		if !c.sleep(delay) {
			return err
		}
		m.Attempt++
		if err = c.call(m); err == nil {
			return nil
		}
	}
}

// inPlaceDelay is how long to wait before retrying in place a message that
// failed with err: its nack delay, or else backoff, which it returns
// doubled (up to maxInPlaceDelay) for the next retry.
func (r *run) inPlaceDelay(err error, backoff time.Duration) (delay, next time.Duration) {
	if d := r.delayOf(err); d > 0 {
		return d, backoff
	}
	return backoff, min(backoff*2, maxInPlaceDelay)
}

// sleep waits d, or returns false when the caller's ctx ends first.
func (r *run) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.stop:
		return false
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
