package watermill

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// NewSubscriber subscribes to opts.Topic in opts.Group. With a shared
// Subscriber it joins the group's subscription (started by Declare or by
// the group's first subscriber). With NewSubscriber it makes the group's
// Watermill subscriber and calls Subscribe on it once — or, on a Competing
// backend, SubscriberOptions.Prefetch times unless Ordering is PerKey —
// before returning, so that the subscription exists when it returns.
//
// It refuses (semantics.Unsupported) Guarantee AtMostOnce unless
// Options.SyncAck, and Ordering PerKey unless the backend claims
// PerKeyOrdering: the bridge never runs weaker than asked.
func (b *Broker) NewSubscriber(ctx context.Context, opts driver.SubscriberOptions) (driver.Subscriber, error) {
	op := b.opts.Name + ": subscribe"
	if err := b.checkNames(op, opts.Topic, opts.Group); err != nil {
		return nil, err
	}
	if opts.Guarantee == semantics.AtMostOnce && !b.opts.SyncAck {
		return nil, unsupported(op, "at-most-once needs an ack the backend has recorded when it returns, and this Watermill backend forwards acks from a goroutine of its own (Options.SyncAck is false), so an acked message can be delivered again; consume at-least-once (with dedupe for effectively-once), or use the broker's own queuekit adapter")
	}
	if opts.Ordering == semantics.PerKey && !b.caps.PerKeyOrdering {
		return nil, unsupported(op, "per-key ordering: this Watermill backend keeps no per-key order (Options.Capabilities.PerKeyOrdering is false)")
	}
	s := &subscriber{
		b: b, opts: opts, op: b.opts.Name + ": receive",
		closing: make(chan struct{}),
		pending: map[*delivery]struct{}{},
	}
	if b.opts.Subscriber != nil {
		f, err := b.sharedGroup(op, opts.Topic, opts.Group)
		if err != nil {
			return nil, err
		}
		s.feed = f
		return s, nil
	}
	w, err := b.opts.NewSubscriber(ctx, opts)
	if err != nil {
		return nil, driver.WrapError(semantics.Transient, op, err)
	}
	n := 1
	if b.opts.Competing && opts.Ordering != semantics.PerKey {
		n = opts.Prefetch
		if n == 0 {
			n = DefaultPrefetch
		}
	}
	f, err := subscribeFeed(w, opts.Topic, n)
	if err != nil {
		_ = w.Close()
		return nil, driver.WrapError(semantics.Transient, op, err)
	}
	s.feed, s.wsub = f, w
	if err := b.remember(opts.Topic, opts.Group, nil); err != nil {
		_ = s.Close(ctx)
		return nil, err
	}
	return s, nil
}

// feed moves the messages of one or more Watermill subscription channels to
// the subscribers that read out.
type feed struct {
	out     chan *message.Message // unbuffered: each pump holds at most one message
	ended   chan struct{}         // closed when every channel closed before stop
	stopped chan struct{}         // closed by stop
	cancel  context.CancelFunc    // ends the Subscribe calls
	live    atomic.Int32          // channels still open
	pumps   sync.WaitGroup
	once    sync.Once
	err     error
}

// subscribeFeed calls wsub.Subscribe(topic) n times and feeds what the
// channels deliver.
func subscribeFeed(wsub message.Subscriber, topic string, n int) (*feed, error) {
	ctx, cancel := context.WithCancel(context.Background())
	f := &feed{
		out:     make(chan *message.Message),
		ended:   make(chan struct{}),
		stopped: make(chan struct{}),
		cancel:  cancel,
	}
	f.live.Store(int32(n))
	for i := range n {
		ch, err := wsub.Subscribe(ctx, topic)
		if err != nil {
			f.live.Add(int32(i - n)) // the calls not made will not end
			_ = f.stop(context.Background(), "")
			return nil, err
		}
		f.pumps.Add(1)
		go f.pump(ch)
	}
	return f, nil
}

// pump moves messages from one Watermill subscription channel to out. A
// message taken from the channel when the feed stops is nacked, so that
// Watermill can redeliver it: the bridge never drops one.
func (f *feed) pump(ch <-chan *message.Message) {
	defer f.pumps.Done()
	for {
		select {
		case wm, ok := <-ch:
			if !ok {
				if f.live.Add(-1) == 0 {
					close(f.ended)
				}
				return
			}
			select {
			case f.out <- wm:
			case <-f.stopped:
				wm.Nack()
				return
			}
		case <-f.stopped:
			return
		}
	}
}

// stop ends the Subscribe calls and waits (no longer than ctx) for the
// pumps. A second stop returns the first one's error.
func (f *feed) stop(ctx context.Context, op string) error {
	f.once.Do(func() {
		close(f.stopped)
		f.cancel()
		f.err = within(ctx, op, func() error {
			f.pumps.Wait()
			return nil
		})
	})
	return f.err
}

// subscriber is a queuekit driver subscriber over a feed.
type subscriber struct {
	b    *Broker
	opts driver.SubscriberOptions
	op   string
	feed *feed
	wsub message.Subscriber // owned, with its feed (from Options.NewSubscriber), or nil

	closing   chan struct{}
	mu        sync.Mutex
	closed    bool
	pending   map[*delivery]struct{} // handed out, not yet given back to Watermill
	closeOnce sync.Once
	closeErr  error
}

var _ driver.BatchReceiver = (*subscriber)(nil)

// Receive returns the next message of the subscriber's Watermill
// subscriptions.
func (s *subscriber) Receive(ctx context.Context) (driver.Delivery, error) {
	select {
	case wm := <-s.feed.out:
		return s.deliver(wm)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.closing:
		return nil, driver.ErrClosed
	case <-s.feed.ended:
		return nil, driver.Errorf(semantics.Closed, s.op, "every Watermill subscription to %s ended (its channel was closed) before the subscriber was closed", s.opts.Topic)
	}
}

// ReceiveBatch is Receive for up to len(buf) messages: it waits for one,
// then takes what the subscriptions have ready without waiting.
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	return driver.FillBatch(ctx, buf, s.Receive, func() (driver.Delivery, bool) {
		select {
		case wm := <-s.feed.out:
			d, err := s.deliver(wm)
			return d, err == nil // closed: the next Receive reports it
		default:
			return nil, false
		}
	})
}

func (s *subscriber) deliver(wm *message.Message) (driver.Delivery, error) {
	d := &delivery{s: s, wm: wm, msg: FromWatermill(wm, s.opts.Topic)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		wm.Nack()
		return nil, driver.ErrClosed
	}
	s.pending[d] = struct{}{}
	if t := s.opts.AckTimeout; t > 0 {
		d.timer = time.AfterFunc(t, d.expire)
	}
	return d, nil
}

// Close gives back what the subscriber holds: deliveries not yet settled,
// and delayed nacks still waiting, are nacked at once. A subscriber of a
// shared group leaves the group's subscription running for the others (and
// the next); one from Options.NewSubscriber ends its Subscribe calls and
// closes its Watermill subscriber. What Watermill does with a nacked
// message is the backend's business: GoChannel sends it again on the
// group's subscription, watermill-amqp requeues it.
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
		if s.wsub == nil {
			return
		}
		errs := []error{s.feed.stop(ctx, s.b.opts.Name+": close subscriber, waiting for its subscriptions")}
		errs = append(errs, within(ctx, s.b.opts.Name+": close subscriber", s.wsub.Close))
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// delivery is one Watermill message handed out by Receive. Package broker
// calls Ack or Nack once; settle guards against the ack timeout and Close,
// which give the message back on their own. timer and delayed are guarded
// by s.mu.
type delivery struct {
	s       *subscriber
	wm      *message.Message
	msg     *driver.Message
	settle  driver.Settlement
	timer   *time.Timer // ack timeout, then the delayed nack
	delayed bool        // a delayed nack is waiting on timer
}

func (d *delivery) Message() *driver.Message { return d.msg }

// Ack acknowledges the Watermill message. With a SyncAck backend the ack
// is recorded when it returns.
func (d *delivery) Ack(context.Context) error {
	if first, _ := d.settle.Ack(); !first {
		return ErrExpired // only the ack timeout or Close settle it otherwise
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
func (d *delivery) Nack(_ context.Context, delay time.Duration) error {
	if first, _ := d.settle.Nack(); !first {
		return nil // the ack timeout or Close nacked it already
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
	}
	d.s.mu.Unlock()
	if delayed || first {
		d.wm.Nack()
	}
}
