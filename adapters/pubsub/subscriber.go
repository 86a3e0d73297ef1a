package pubsub

import (
	"context"
	"sync"
	"time"

	ps "cloud.google.com/go/pubsub/v2"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// NewSubscriber subscribes to opts.Topic as group opts.Group: the group is
// the subscription Options.SubscriptionName(topic, group), created when
// absent (with its topic; with a DeadLetterPolicy to opts.DeadLetterTopic,
// and a subscription of the same group on that topic so that no dead letter
// is dropped, when opts.MaxAttempts > 0). Receiving starts at the first
// Receive.
func (b *Broker) NewSubscriber(ctx context.Context, opts broker.SubscriberOptions) (broker.Subscriber, error) {
	const op = "gcppubsub: subscribe"
	if b.closed.Load() {
		return nil, broker.ErrClosed
	}
	if err := opts.Validate(op); err != nil {
		return nil, err
	}
	opts = opts.WithDefaults()
	name := b.opts.Subscription
	if name == "" {
		name = b.opts.SubscriptionName(opts.Topic, opts.Group)
	}
	cfg := SubscriptionConfig{
		Name:            name,
		Topic:           opts.Topic,
		AckDeadline:     opts.AckTimeout,
		Ordering:        !b.opts.DisableOrdering || opts.Ordering == semantics.PerKey,
		ExactlyOnce:     b.opts.ExactlyOnce,
		RetryMinBackoff: b.opts.RetryMinBackoff,
		RetryMaxBackoff: b.opts.RetryMaxBackoff,
	}
	if opts.MaxAttempts > 0 {
		cfg.DeadLetterTopic = opts.DeadLetterTopic
		cfg.MaxDeliveryAttempts = opts.MaxAttempts
	}
	sub, err := b.EnsureSubscription(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if opts.Ordering == semantics.PerKey && !sub.EnableMessageOrdering {
		return nil, broker.Errorf(semantics.InvalidArgument, op,
			"per-key ordering asked for, but subscription %s exists without message ordering (Pub/Sub cannot enable it later)", sub.Name)
	}
	if opts.MaxAttempts > 0 && !b.opts.DisableCreate {
		if _, err := b.EnsureSubscription(ctx, SubscriptionConfig{
			Name:  b.opts.SubscriptionName(opts.DeadLetterTopic, opts.Group),
			Topic: opts.DeadLetterTopic,
		}); err != nil {
			return nil, err
		}
	}

	s := b.client.Subscriber(sub.Name)
	rs := ps.DefaultReceiveSettings
	rs.MaxOutstandingMessages = b.opts.MaxOutstandingMessages
	if opts.Prefetch > 0 {
		rs.MaxOutstandingMessages = opts.Prefetch
	}
	if b.opts.MaxOutstandingBytes > 0 {
		rs.MaxOutstandingBytes = b.opts.MaxOutstandingBytes
	}
	if b.opts.MaxExtension > 0 {
		rs.MaxExtension = b.opts.MaxExtension
	}
	rs.NumGoroutines = b.opts.Streams
	// Each lease extension lasts AckTimeout (default the ack deadline), so
	// the messages of a consumer that died, or that were in flight to a
	// stream that closed, come back after about that long rather than after
	// the SDK's default (the 99th percentile of ack latency, up to 10m).
	per := b.opts.AckDeadline
	if opts.AckTimeout > 0 {
		per = opts.AckTimeout
	}
	per = min(max((per+time.Second-1).Truncate(time.Second), time.Second), 600*time.Second)
	rs.MinDurationPerAckExtension = per
	rs.MaxDurationPerAckExtension = per
	s.ReceiveSettings = rs

	return &subscriber{
		topic:       opts.Topic,
		sub:         s,
		exactlyOnce: sub.EnableExactlyOnceDelivery,
		counted:     sub.DeadLetterPolicy == nil,
		subName:     sub.Name,
		attempts:    &b.attempts,
		ch:          make(chan *delivery),
		closing:     make(chan struct{}),
	}, nil
}

// subscriber bridges the SDK's callback model to Receive: each callback
// hands its delivery over an unbuffered channel and then waits, holding its
// flow-control slot and ordering turn, until the delivery is settled or the
// subscriber closes. So MaxOutstandingMessages bounds the deliveries held
// unsettled, and the next message of an ordering key is not handed out
// before the previous one is settled.
type subscriber struct {
	topic       string
	sub         *ps.Subscriber
	exactlyOnce bool // Ack waits for the broker's confirmation
	counted     bool // no DeadLetterPolicy: count attempts in the Broker
	subName     string
	attempts    *attempts

	ch      chan *delivery
	closing chan struct{}

	mu      sync.Mutex
	closed  bool
	running bool
	cancel  context.CancelFunc
	done    chan struct{} // closed when the running SDK Receive returns
	err     error         // why the last SDK Receive failed, reported once
}

var (
	_ broker.Subscriber    = (*subscriber)(nil)
	_ broker.BatchReceiver = (*subscriber)(nil)
)

// start runs the SDK's Receive unless it runs already, and returns the
// channel closed when it stops.
func (s *subscriber) start() (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, broker.ErrClosed
	}
	if err := s.err; err != nil {
		s.err = nil // reported once; the next call starts receiving again
		return nil, err
	}
	if !s.running {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		s.running, s.cancel, s.done = true, cancel, done
		go func() {
			err := s.sub.Receive(ctx, s.handle)
			cancel()
			s.mu.Lock()
			s.running = false
			if err != nil && !s.closed {
				s.err = wrap("gcppubsub: receive", err)
			}
			s.mu.Unlock()
			close(done)
		}()
	}
	return s.done, nil
}

// handle is the SDK callback.
func (s *subscriber) handle(ctx context.Context, m *ps.Message) {
	d := s.newDelivery(m)
	select {
	case s.ch <- d:
	case <-s.closing:
		d.finish(false)
		return
	case <-ctx.Done():
		d.finish(false)
		return
	}
	select {
	case <-d.done:
	case <-s.closing:
		d.finish(false) // not settled: give it back
	}
}

// Receive returns the next delivery.
func (s *subscriber) Receive(ctx context.Context) (broker.Delivery, error) {
	for {
		done, err := s.start()
		if err != nil {
			return nil, err
		}
		select {
		case d := <-s.ch:
			return d, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closing:
			return nil, broker.ErrClosed
		case <-done:
		}
	}
}

// ReceiveBatch waits for one delivery, then adds those already waiting.
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []broker.Delivery) (int, error) {
	return broker.FillBatch(ctx, buf, s.Receive, broker.Ready(s.ch))
}

// Close stops receiving: deliveries not settled yet are nacked (a pending
// delayed Nack is cut short) so that the broker redelivers them at once,
// and Close waits, no longer than ctx, for the client to finish its
// shutdown, which sends the last acks and nacks. When ctx ends first, Close
// returns a Transient error and the shutdown goes on in the background;
// Close may be called again to wait for it.
func (s *subscriber) Close(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
		if s.running {
			s.cancel()
		}
	}
	running, done := s.running, s.done
	s.mu.Unlock()
	if !running {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return broker.Errorf(semantics.Transient, "gcppubsub: close subscriber",
			"%s: the client has not finished sending the last acks and nacks: %w (it goes on in the background; a message whose ack is not sent when the process exits is redelivered)",
			s.subName, ctx.Err())
	}
}

// attempts counts deliveries per subscription and message for subscriptions
// without a dead-letter policy, where Pub/Sub reports no DeliveryAttempt: it
// sees every delivery made by the subscribers of one Broker. Entries go at
// Ack; at most maxCounted are kept (one is forgotten at random beyond).
type attempts struct {
	mu sync.Mutex
	n  map[attemptKey]int
}

// attemptKey is a subscription's full name and a Pub/Sub message ID.
type attemptKey struct{ sub, id string }

// maxCounted bounds the attempt counts kept.
const maxCounted = 1 << 16

func (a *attempts) next(key attemptKey) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == nil {
		a.n = map[attemptKey]int{}
	}
	n, seen := a.n[key]
	if !seen && len(a.n) >= maxCounted {
		for k := range a.n {
			delete(a.n, k)
			break
		}
	}
	n++
	a.n[key] = n
	return n
}

func (a *attempts) forget(key attemptKey) {
	a.mu.Lock()
	delete(a.n, key)
	a.mu.Unlock()
}

// newDelivery converts m. Attributes become headers, except those the
// publisher added (ID, publish time, key), which become fields. A message
// published without queuekit keeps its Pub/Sub message ID and publish time.
func (s *subscriber) newDelivery(m *ps.Message) *delivery {
	d := &delivery{m: m, s: s, done: make(chan struct{})}
	msg := &d.msg
	msg.Topic = s.topic
	msg.Payload = m.Data
	msg.Key = m.OrderingKey
	attrs := m.Attributes // ours now: the SDK does not read them again
	if v, ok := attrs[broker.HeaderID]; ok {
		msg.ID = v
		delete(attrs, broker.HeaderID)
	} else {
		msg.ID = m.ID
	}
	if v, ok := attrs[broker.HeaderPublishedAt]; ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			msg.PublishedAt = t
			delete(attrs, broker.HeaderPublishedAt)
		}
	}
	if msg.PublishedAt.IsZero() {
		msg.PublishedAt = m.PublishTime
	}
	if v, ok := attrs[headerKey]; ok {
		if msg.Key == "" {
			msg.Key = v
		}
		delete(attrs, headerKey)
	}
	if len(attrs) > 0 {
		msg.Headers = attrs
	}
	switch {
	case m.DeliveryAttempt != nil:
		msg.Attempt = *m.DeliveryAttempt
	case s.counted:
		msg.Attempt = s.attempts.next(attemptKey{s.subName, m.ID})
	}
	return d
}

// delivery is one Pub/Sub message handed out by Receive.
type delivery struct {
	msg    broker.Message
	m      *ps.Message
	s      *subscriber
	settle broker.Settlement

	mu       sync.Mutex
	finished bool          // the SDK message was acked or nacked
	done     chan struct{} // closed when finished
	timer    *time.Timer   // pending delayed nack
}

var errReleased = broker.Errorf(semantics.Closed, "gcppubsub", "the subscriber was closed and the delivery given back for redelivery")

func (d *delivery) Message() *broker.Message { return &d.msg }

// finish acks or nacks the SDK message once; it reports false when that
// was done already (by Close).
func (d *delivery) finish(ack bool) bool {
	_, ok := d.finishWith(ack)
	return ok
}

func (d *delivery) finishWith(ack bool) (*ps.AckResult, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return nil, false
	}
	d.finished = true
	if d.timer != nil {
		d.timer.Stop()
	}
	var r *ps.AckResult
	switch {
	case ack && d.s.exactlyOnce:
		r = d.m.AckWithResult()
	case ack:
		d.m.Ack()
	default:
		d.m.Nack()
	}
	close(d.done)
	return r, true
}

// Ack acknowledges the message. On an exactly-once subscription it returns
// once the broker has confirmed; otherwise the client sends it within 100ms
// (and before Close returns).
func (d *delivery) Ack(ctx context.Context) error {
	if first, err := d.settle.Ack(); !first {
		return err
	}
	r, ok := d.finishWith(true)
	if !ok {
		return errReleased
	}
	if d.s.counted {
		d.s.attempts.forget(attemptKey{d.s.subName, d.m.ID})
	}
	if r == nil {
		return nil
	}
	st, err := r.Get(ctx)
	if err == nil && st == ps.AcknowledgeStatusSuccess {
		return nil
	}
	kind := semantics.Permanent // the ack ID expired or was refused: the message will be redelivered
	if err == nil || st == ps.AcknowledgeStatusOther {
		kind = semantics.Transient
	}
	if err == nil {
		return broker.Errorf(kind, "gcppubsub: ack", "exactly-once ack refused (status %d)", st)
	}
	return broker.WrapError(kind, "gcppubsub: ack", err)
}

// Nack gives the message back. With delay 0 it is redelivered at once
// (after the subscription's RetryPolicy backoff, if it has one). With delay
// > 0 the subscriber keeps the message leased — the client keeps extending
// its ack deadline, so the broker hands it to nobody — and nacks it when
// delay has passed: the broker redelivers it no sooner than delay. The
// delivery keeps its flow-control slot meanwhile. The streaming client does
// not expose ack IDs, so a single ModifyAckDeadline(delay) is not possible.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if first, err := d.settle.Nack(); !first {
		return err
	}
	if delay <= 0 {
		if !d.finish(false) {
			return errReleased
		}
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return errReleased
	}
	d.timer = time.AfterFunc(delay, func() { d.finish(false) })
	return nil
}
