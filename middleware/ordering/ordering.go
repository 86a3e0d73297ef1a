// Package ordering processes messages sequentially per key across N workers,
// for receive loops that broker.Consume does not run — your own loop over a
// Subscriber, a bridge, a batch — or where Consume's per-key mode falls
// short.
//
// broker.Consume with semantics.PerKey hashes each key to one worker, so a
// slow message holds up every other key that hashes to its worker. A
// Dispatcher keeps one queue per key instead and lets any idle worker take
// the next key that has work and no handler running: the messages of one key
// run one at a time in the order they were dispatched, different keys run in
// parallel, and a slow key delays only itself. Messages with an empty key are
// not ordered.
//
// Delivery semantics are at-least-once: a delivery is acked after its
// handler returns nil and nacked (after broker.RetryAfter's delay, or
// Options.NackDelay) when it fails or panics. A nacked message is
// redelivered by the broker after the key's later messages may have run; for
// strict order through failures, retry in process (middleware/retry) so a
// failing message holds its key.
//
// Order is the order of Dispatch calls, so call Dispatch from one goroutine
// in the order the broker delivered (Run does).
package ordering

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Options configure a Dispatcher.
type Options struct {
	// Workers is how many handlers run at once; default 8.
	Workers int
	// MaxPending bounds the deliveries dispatched but not yet settled;
	// Dispatch waits for room beyond it. Default 64 per worker.
	MaxPending int
	// Key returns a message's ordering key; default Message.Key.
	Key func(*broker.Message) string
	// NackDelay is the redelivery delay after a failure that carries none
	// of its own; default 0.
	NackDelay time.Duration
	// OnError observes handler errors, panics and failed settlements.
	// Default: ignore (count them in your handler or middleware).
	OnError func(msg *broker.Message, err error)
}

// Dispatcher runs a handler over dispatched deliveries, one at a time per
// key, on a pool of workers. It is safe for concurrent use, but order is
// only kept among Dispatch calls made in sequence.
type Dispatcher struct {
	h    broker.Handler
	o    Options
	hctx context.Context
	stop context.CancelFunc

	slots chan struct{} // MaxPending
	mu    sync.Mutex
	cond  sync.Cond
	keys  map[string]*keyQueue
	ready []*keyQueue // keys with work and no handler running, oldest first
	head  int
	// closed: no more Dispatch; abandon: do not start queued work either
	closed, abandon bool
	wg              sync.WaitGroup
}

type keyQueue struct {
	key     string
	items   []broker.Delivery
	running bool
}

// ErrClosed is returned by Dispatch after Close.
var ErrClosed = broker.Errorf(semantics.Closed, "ordering", "dispatcher closed")

// New starts a Dispatcher running h. It panics on negative options.
func New(h broker.Handler, opts Options) *Dispatcher {
	if h == nil || opts.Workers < 0 || opts.MaxPending < 0 || opts.NackDelay < 0 {
		panic(fmt.Sprintf("ordering: handler is required and options must be >= 0: %+v", opts))
	}
	if opts.Workers == 0 {
		opts.Workers = 8
	}
	if opts.MaxPending == 0 {
		opts.MaxPending = 64 * opts.Workers
	}
	if opts.Key == nil {
		opts.Key = func(m *broker.Message) string { return m.Key }
	}
	if opts.OnError == nil {
		opts.OnError = func(*broker.Message, error) {}
	}
	d := &Dispatcher{h: h, o: opts, slots: make(chan struct{}, opts.MaxPending), keys: map[string]*keyQueue{}}
	d.hctx, d.stop = context.WithCancel(context.Background())
	d.cond.L = &d.mu
	for range opts.Workers {
		d.wg.Add(1)
		go d.work()
	}
	return d
}

// Dispatch queues del behind the earlier deliveries of its key. It waits
// while MaxPending deliveries are unsettled, until ctx is done (then it
// returns ctx's error and del is not queued: settle it yourself).
func (d *Dispatcher) Dispatch(ctx context.Context, del broker.Delivery) error {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case del == nil:
		return broker.Errorf(semantics.InvalidArgument, "ordering: dispatch", "delivery is nil")
	}
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	key := d.o.Key(del.Message())
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		<-d.slots
		return ErrClosed
	}
	q := &keyQueue{key: key}
	if key != "" {
		if old, ok := d.keys[key]; ok {
			q = old
		} else {
			d.keys[key] = q
		}
	}
	q.items = append(q.items, del)
	if !q.running && len(q.items) == 1 {
		d.ready = append(d.ready, q)
		d.cond.Signal()
	}
	d.mu.Unlock()
	return nil
}

func (d *Dispatcher) work() {
	defer d.wg.Done()
	d.mu.Lock()
	for {
		for d.head == len(d.ready) && !d.closed {
			d.cond.Wait()
		}
		if d.head == len(d.ready) || d.abandon {
			d.mu.Unlock()
			return
		}
		q := d.ready[d.head]
		d.ready[d.head] = nil
		d.head++
		if d.head == len(d.ready) {
			d.ready, d.head = d.ready[:0], 0
		}
		del := q.items[0]
		q.items[0] = nil
		q.items = q.items[1:]
		q.running = true
		d.mu.Unlock()

		d.process(del)

		d.mu.Lock()
		q.running = false
		if len(q.items) > 0 {
			d.ready = append(d.ready, q) // behind the other ready keys: fair
		} else if q.key != "" {
			delete(d.keys, q.key)
		}
		<-d.slots
	}
}

func (d *Dispatcher) process(del broker.Delivery) {
	m := del.Message()
	err := d.call(m)
	if err == nil {
		if aerr := del.Ack(d.hctx); aerr != nil {
			d.o.OnError(m, fmt.Errorf("ordering: ack: %w", aerr))
		}
		return
	}
	d.o.OnError(m, err)
	delay := d.o.NackDelay
	if rd, ok := broker.RetryDelay(err); ok {
		delay = rd
	}
	if nerr := del.Nack(d.hctx, delay); nerr != nil && !errors.Is(nerr, broker.ErrClosed) {
		d.o.OnError(m, fmt.Errorf("ordering: nack: %w", nerr))
	}
}

func (d *Dispatcher) call(m *broker.Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &broker.PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return d.h.Handle(d.hctx, m)
}

// Close stops taking deliveries and waits until every dispatched one was
// handled and settled. When ctx is done first, the deliveries not yet
// started are nacked, the running handlers' context is cancelled, and Close
// returns ctx's error once they have returned.
func (d *Dispatcher) Close(ctx context.Context) error {
	d.mu.Lock()
	d.closed = true
	d.cond.Broadcast()
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		d.stop()
		return nil
	case <-ctx.Done():
	}
	d.mu.Lock()
	d.abandon = true
	var left []broker.Delivery
	for _, q := range d.ready[d.head:] {
		left = append(left, q.items...)
		q.items = nil
	}
	for _, q := range d.keys {
		if q.running {
			left = append(left, q.items...)
			q.items = nil
		}
	}
	d.ready, d.head = nil, 0
	d.mu.Unlock()
	d.stop()
	for _, del := range left {
		_ = del.Nack(context.Background(), 0)
	}
	<-done
	return ctx.Err()
}

// Run receives from sub and dispatches to a Dispatcher running h until ctx
// is done, then closes the Dispatcher, giving in-flight handlers up to
// shutdown to finish (0: 30s). It returns nil after a cancellation, or the
// subscriber's error when it fails with anything but a transient error
// (which it retries with backoff). It does not close sub.
func Run(ctx context.Context, sub broker.Subscriber, h broker.Handler, opts Options, shutdown time.Duration) error {
	if shutdown <= 0 {
		shutdown = 30 * time.Second
	}
	d := New(h, opts)
	err := receive(ctx, sub, d)
	cctx, cancel := context.WithTimeout(context.Background(), shutdown)
	defer cancel()
	_ = d.Close(cctx)
	return err
}

func receive(ctx context.Context, sub broker.Subscriber, d *Dispatcher) error {
	backoff := 10 * time.Millisecond
	for {
		del, err := sub.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if broker.KindOf(err) != semantics.Transient {
				return broker.WrapError(semantics.Unknown, "ordering: receive", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		if err := d.Dispatch(ctx, del); err != nil {
			_ = del.Nack(context.WithoutCancel(ctx), 0)
			return nil
		}
	}
}
