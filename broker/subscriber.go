package broker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Subscriber hands out deliveries from one subscription, declared with its
// guarantee and ordering (Options). Most code runs Consume on it rather
// than calling Receive. A nil *Subscriber returns ErrClosed.
type Subscriber struct {
	b      *Broker
	drv    driver.Subscriber
	batch  driver.BatchReceiver // nil when the adapter has none
	opts   SubscriberOptions
	closed atomic.Bool
	mu     sync.Mutex // serialises Close
	done   bool       // the driver's Close succeeded (or failed for good)
	err    error
}

// Options returns the subscription's options, defaults filled in.
func (s *Subscriber) Options() SubscriberOptions {
	if s == nil {
		return SubscriberOptions{}
	}
	return s.opts
}

// Receive blocks until a delivery is available, ctx ends (an error of kind
// semantics.Canceled that matches ctx.Err()), or the subscriber is closed
// (ErrClosed). Under AtMostOnce, Ack the delivery before handling it.
func (s *Subscriber) Receive(ctx context.Context) (*Delivery, error) {
	const op = "queuekit: receive"
	if s == nil || s.closed.Load() {
		return nil, ErrClosed
	}
	if ctx == nil {
		return nil, Errorf(semantics.InvalidArgument, op, "nil context")
	}
	d, err := s.drv.Receive(ctx)
	if err != nil {
		return nil, s.receiveError(ctx, op, err)
	}
	return &Delivery{d: d, sub: s}, nil
}

func (s *Subscriber) receiveError(ctx context.Context, op string, err error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return opError(ctx, op, err)
}

// ReceiveBatch blocks like Receive until at least one delivery is
// available, then fills buf with up to len(buf) deliveries without blocking
// further (in one broker call where the adapter can), and returns how many.
func (s *Subscriber) ReceiveBatch(ctx context.Context, buf []*Delivery) (int, error) {
	const op = "queuekit: receive"
	if s == nil || s.closed.Load() {
		return 0, ErrClosed
	}
	if ctx == nil {
		return 0, Errorf(semantics.InvalidArgument, op, "nil context")
	}
	if len(buf) == 0 {
		return 0, Errorf(semantics.InvalidArgument, op, "empty buffer")
	}
	ds := make([]driver.Delivery, len(buf))
	n, err := s.receiveBatch(ctx, ds)
	if err != nil {
		return 0, err
	}
	all := make([]Delivery, n)
	for i, d := range ds[:n] {
		all[i].d, all[i].sub = d, s
		buf[i] = &all[i]
	}
	return n, nil
}

// receiveBatch fills buf with driver deliveries, for Consume.
func (s *Subscriber) receiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	const op = "queuekit: receive"
	if s.closed.Load() {
		return 0, ErrClosed
	}
	var n int
	var err error
	if s.batch != nil {
		n, err = s.batch.ReceiveBatch(ctx, buf)
	} else {
		var d driver.Delivery
		if d, err = s.drv.Receive(ctx); err == nil {
			buf[0], n = d, 1
		}
	}
	if err != nil {
		return 0, s.receiveError(ctx, op, err)
	}
	return n, nil
}

// As sets target to the adapter's subscriber or an SDK value it exposes.
func (s *Subscriber) As(target any) bool {
	if s == nil {
		return false
	}
	return as(s.drv, target)
}

// Close stops taking messages: a waiting Receive returns ErrClosed, the
// deliveries not settled yet are redelivered by the broker, and settling
// them afterwards returns ErrClosed. A Close whose ctx ended before the
// adapter finished may be called again to wait for it; otherwise closing
// twice returns the first Close's error.
func (s *Subscriber) Close(ctx context.Context) error {
	if s == nil {
		return nil
	}
	err := s.close(ctx)
	s.b.forgetSubscriber(s)
	return err
}

func (s *Subscriber) close(ctx context.Context) error {
	s.closed.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return s.err
	}
	s.err = opError(ctx, "queuekit: close subscriber", s.drv.Close(ctx))
	s.done = s.err == nil || KindOf(s.err) != semantics.Canceled
	return s.err
}

// settle acks d, or nacks it after delay when nack is set, unless s is
// closed: Close handed s's unsettled deliveries back to the broker, which
// redelivers them, so settling one is ErrClosed without asking the driver
// (a driver's Ack and Nack are never called after the Close of what made
// them). Every settlement of a driver delivery goes through it: Delivery's
// Ack and Nack, Consume's and ConsumeBatch's.
func (s *Subscriber) settle(ctx context.Context, d driver.Delivery, nack bool, delay time.Duration) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if nack {
		return d.Nack(ctx, delay)
	}
	return d.Ack(ctx)
}

// Delivery is one delivery of a message, to be settled with Ack or Nack.
// Settling is idempotent: a second Ack (or Nack) returns nil and does
// nothing; Nack after Ack (or Ack after Nack) returns ErrAlreadySettled. A
// settlement the broker refused (the error is returned) leaves the delivery
// unsettled, so it may be tried again. Neither ever panics.
type Delivery struct {
	d     driver.Delivery
	sub   *Subscriber
	state atomic.Uint32
}

const (
	unsettled uint32 = iota
	settling
	acked
	nacked
)

// Message is the delivered message. It must not be modified after settling.
func (d *Delivery) Message() *Message {
	if d == nil {
		return nil
	}
	return d.d.Message()
}

// Ack removes the message from the subscription. Under AtMostOnce it
// returns once the broker recorded it; under AtLeastOnce an adapter may
// batch acks and return first (a crash right after may redeliver), and the
// subscriber's Close sends what it holds.
func (d *Delivery) Ack(ctx context.Context) error {
	return d.settle(ctx, "queuekit: ack", acked, 0)
}

// Nack asks for redelivery no sooner than delay (0: at once).
func (d *Delivery) Nack(ctx context.Context, delay time.Duration) error {
	if delay < 0 {
		return Errorf(semantics.InvalidArgument, "queuekit: nack", "negative delay %v", delay)
	}
	return d.settle(ctx, "queuekit: nack", nacked, delay)
}

func (d *Delivery) settle(ctx context.Context, op string, to uint32, delay time.Duration) error {
	if d == nil {
		return Errorf(semantics.InvalidArgument, op, "nil delivery")
	}
	if ctx == nil {
		return Errorf(semantics.InvalidArgument, op, "nil context")
	}
	for {
		st := d.state.Load()
		if st == unsettled && d.sub.closed.Load() {
			return ErrClosed // see Subscriber.settle
		}
		switch s := st; s {
		case to:
			return nil
		case unsettled:
			if !d.state.CompareAndSwap(unsettled, settling) {
				continue
			}
			if err := d.sub.settle(ctx, d.d, to == nacked, delay); err != nil {
				d.state.Store(unsettled)
				return opError(ctx, op, err)
			}
			d.state.Store(to)
			return nil
		case settling:
			// Another goroutine is settling this delivery right now.
			return Errorf(semantics.InvalidArgument, op, "delivery is being settled concurrently")
		default:
			return ErrAlreadySettled
		}
	}
}
