package watermill

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// ErrExpired is returned by Ack on a delivery the bridge already gave back
// to Watermill with a Nack: its SubscriberOptions.AckTimeout passed, or its
// subscriber was closed. The message is (or will be) delivered again; the
// Ack does nothing.
var ErrExpired = &broker.Error{Kind: semantics.Permanent, Op: "watermill: ack", Err: errors.New("delivery expired (ack timeout or subscriber closed): the message was nacked for redelivery")}

// NewSubscriber subscribes to opts.Topic: it makes the group's Watermill
// subscriber (Options.NewSubscriber) or uses the shared one, and calls
// Subscribe on it once — or, on a Competing backend, SubscriberOptions.
// Prefetch times unless Ordering is PerKey — before returning, so that the
// subscription exists when it returns (GoChannel drops what is published to
// a topic nobody subscribes to).
func (b *Broker) NewSubscriber(ctx context.Context, opts broker.SubscriberOptions) (broker.Subscriber, error) {
	op := b.opts.Name + ": subscribe"
	if err := opts.Validate(op); err != nil {
		return nil, err
	}
	opts = opts.WithDefaults()
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, broker.ErrClosed
	}
	subCtx, cancel := context.WithCancel(context.Background())
	s := &subscriber{
		b: b, opts: opts, op: b.opts.Name + ": receive",
		cancel:  cancel,
		out:     make(chan *message.Message),
		closing: make(chan struct{}),
		ended:   make(chan struct{}),
		pending: map[*delivery]struct{}{},
	}
	wsub := b.opts.Subscriber
	if wsub == nil {
		w, err := b.opts.NewSubscriber(ctx, opts)
		if err != nil {
			cancel()
			return nil, broker.WrapError(semantics.Transient, op, err)
		}
		s.wsub, wsub = w, w
	}
	n := 1
	if b.opts.Competing && opts.Ordering != semantics.PerKey {
		n = opts.Prefetch
		if n == 0 {
			n = DefaultPrefetch
		}
	}
	s.live.Store(int32(n))
	for i := 0; i < n; i++ {
		ch, err := wsub.Subscribe(subCtx, opts.Topic)
		if err != nil {
			s.live.Add(int32(i - n)) // the calls not made will not end
			_ = s.Close(ctx)
			return nil, broker.WrapError(semantics.Transient, op, err)
		}
		s.pumps.Add(1)
		go s.pump(ch)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = s.Close(ctx)
		return nil, broker.ErrClosed
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s, nil
}

// subscriber is a queuekit Subscriber over Watermill subscription channels.
type subscriber struct {
	b      *Broker
	opts   broker.SubscriberOptions
	op     string
	wsub   message.Subscriber // owned (from Options.NewSubscriber), or nil
	cancel context.CancelFunc // ends the Subscribe calls

	out     chan *message.Message // unbuffered: the pumps hold at most one message each
	closing chan struct{}
	ended   chan struct{} // closed when every subscription channel closed before Close
	live    atomic.Int32  // subscription channels still open
	pumps   sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	pending   map[*delivery]struct{} // handed out, not yet given back to Watermill
	closeOnce sync.Once
	closeErr  error
}

// pump moves messages from one Watermill subscription channel to Receive.
// A message taken from the channel when the subscriber closes is nacked, so
// Watermill can redeliver it: the bridge never drops one.
func (s *subscriber) pump(ch <-chan *message.Message) {
	defer s.pumps.Done()
	for {
		select {
		case wm, ok := <-ch:
			if !ok {
				if s.live.Add(-1) == 0 {
					close(s.ended)
				}
				return
			}
			select {
			case s.out <- wm:
			case <-s.closing:
				wm.Nack()
				return
			}
		case <-s.closing:
			return
		}
	}
}

// Receive returns the next message of any of the subscriber's Watermill
// subscriptions.
func (s *subscriber) Receive(ctx context.Context) (broker.Delivery, error) {
	select {
	case <-s.closing:
		return nil, broker.ErrClosed
	default:
	}
	select {
	case wm := <-s.out:
		return s.deliver(wm)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.closing:
		return nil, broker.ErrClosed
	case <-s.ended:
		return nil, s.endedErr()
	}
}

// ReceiveBatch is Receive for up to len(buf) messages: it waits for one,
// then takes what the subscriptions have ready without waiting.
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []broker.Delivery) (int, error) {
	return broker.FillBatch(ctx, buf, s.Receive, func() (broker.Delivery, bool) {
		select {
		case wm := <-s.out:
			d, err := s.deliver(wm)
			return d, err == nil // closed: the next Receive reports it
		default:
			return nil, false
		}
	})
}

func (s *subscriber) endedErr() error {
	return broker.Errorf(semantics.Closed, s.op, "every Watermill subscription to %s ended (its channel was closed) before the subscriber was closed", s.opts.Topic)
}

func (s *subscriber) deliver(wm *message.Message) (broker.Delivery, error) {
	d := &delivery{s: s, wm: wm, msg: FromWatermill(wm, s.opts.Topic)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		wm.Nack()
		return nil, broker.ErrClosed
	}
	s.pending[d] = struct{}{}
	if t := s.opts.AckTimeout; t > 0 {
		d.timer = time.AfterFunc(t, d.expire)
	}
	return d, nil
}

// Close ends the subscriber's Watermill subscriptions: deliveries not yet
// settled, and delayed nacks still waiting, are nacked at once, the
// Subscribe contexts are cancelled and a subscriber from
// Options.NewSubscriber is closed. What Watermill does with a nacked message
// is the backend's business: watermill-amqp requeues it, GoChannel drops it
// once its subscription has ended.
func (s *subscriber) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.mu.Lock()
		s.closed = true
		pending := s.pending
		s.pending = nil
		s.mu.Unlock()
		for d := range pending {
			d.release()
		}
		s.cancel()
		var errs []error
		if s.wsub != nil {
			errs = append(errs, within(ctx, s.b.opts.Name+": close subscriber", s.wsub.Close))
		}
		errs = append(errs, within(ctx, s.b.opts.Name+": close subscriber, waiting for its subscriptions", func() error {
			s.pumps.Wait()
			return nil
		}))
		s.b.forget(s)
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// delivery is one Watermill message handed out by Receive. All its fields
// but settle and expired are guarded by s.mu.
type delivery struct {
	s       *subscriber
	wm      *message.Message
	msg     *broker.Message
	settle  broker.Settlement
	expired atomic.Bool // given back by the ack timeout or Close
	timer   *time.Timer // ack timeout, then the delayed nack
	delayed bool        // a delayed nack is waiting on timer
}

func (d *delivery) Message() *broker.Message { return d.msg }

// Ack acknowledges the Watermill message.
func (d *delivery) Ack(ctx context.Context) error {
	if first, err := d.settle.Ack(); !first {
		if err != nil && d.wasExpired() {
			return ErrExpired
		}
		return err
	}
	d.s.mu.Lock()
	delete(d.s.pending, d)
	if d.timer != nil {
		d.timer.Stop()
	}
	d.s.mu.Unlock()
	d.wm.Ack()
	return nil
}

// Nack nacks the Watermill message after delay: the message stays in
// flight (unsettled on the backend) until then, and Watermill redelivers it
// once nacked.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if first, err := d.settle.Nack(); !first {
		if err != nil && d.wasExpired() {
			return nil // it was nacked already
		}
		return err
	}
	s := d.s
	s.mu.Lock()
	if d.timer != nil {
		d.timer.Stop()
	}
	if delay <= 0 || s.closed {
		delete(s.pending, d)
		s.mu.Unlock()
		d.wm.Nack()
		return nil
	}
	d.delayed = true
	d.timer = time.AfterFunc(delay, func() {
		s.mu.Lock()
		_, ok := s.pending[d]
		delete(s.pending, d)
		s.mu.Unlock()
		if ok {
			d.wm.Nack()
		}
	})
	s.mu.Unlock()
	return nil
}

func (d *delivery) wasExpired() bool {
	d.s.mu.Lock() // expire and release set the flag under the lock
	defer d.s.mu.Unlock()
	return d.expired.Load()
}

// expire gives the delivery back when its ack timeout passes unsettled.
func (d *delivery) expire() {
	s := d.s
	s.mu.Lock()
	if _, ok := s.pending[d]; !ok || d.delayed {
		s.mu.Unlock()
		return
	}
	if first, _ := d.settle.Nack(); !first {
		s.mu.Unlock()
		return
	}
	delete(s.pending, d)
	d.expired.Store(true)
	s.mu.Unlock()
	d.wm.Nack()
}

// release gives a pending delivery back at Close: a delayed nack fires now,
// an unsettled delivery is nacked and its late Ack will fail.
func (d *delivery) release() {
	d.s.mu.Lock()
	if d.timer != nil {
		d.timer.Stop()
	}
	delayed := d.delayed
	first := false
	if !delayed {
		first, _ = d.settle.Nack()
		if first {
			d.expired.Store(true)
		}
	}
	d.s.mu.Unlock()
	if delayed || first {
		d.wm.Nack()
	}
}
