package pubsub

import (
	"context"
	"sync"
	"time"

	ps "cloud.google.com/go/pubsub/v2"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// NewSubscriber subscribes to opts.Topic as group opts.Group: the group is
// the subscription subscriptionConfig describes, created when absent (with
// its topic; with a DeadLetterPolicy to opts.DeadLetterTopic, and a
// subscription of the same group on that topic so that no dead letter is
// dropped, when opts.MaxAttempts > 0). Receiving starts at the first
// Receive.
//
// AtMostOnce turns on exactly-once delivery on the subscription (an
// existing one is updated), so that Ack returns only once Pub/Sub recorded
// it; PerKey needs message ordering on the subscription and ordering keys
// on published messages. Where that cannot be had (create=false on a
// subscription without it, ordering=false, a subscription created without
// ordering) NewSubscriber refuses with an Unsupported error naming what
// would work.
func (b *Broker) NewSubscriber(ctx context.Context, opts driver.SubscriberOptions) (driver.Subscriber, error) {
	const op = "gcppubsub: subscribe"
	cfg, err := b.subscriptionConfig(op, opts)
	if err != nil {
		return nil, err
	}
	if opts.Ordering == semantics.PerKey && b.opts.DisableOrdering {
		return nil, driver.Errorf(semantics.Unsupported, op,
			"per-key ordering needs Message.Key published as the Pub/Sub ordering key, which ordering=false (Options.DisableOrdering) turns off: open with ordering=true, the default")
	}
	sub, err := b.EnsureSubscription(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if opts.Ordering == semantics.PerKey && !sub.EnableMessageOrdering {
		return nil, driver.Errorf(semantics.Unsupported, op,
			"per-key ordering asked for, but subscription %s exists without message ordering, which Pub/Sub cannot enable later: subscribe as another group (the adapter creates its subscription with ordering), or recreate the subscription with --enable-message-ordering", sub.Name)
	}
	if opts.Guarantee == semantics.AtMostOnce && !sub.EnableExactlyOnceDelivery {
		return nil, driver.Errorf(semantics.Unsupported, op,
			"at-most-once needs exactly-once delivery on subscription %s, so that Ack returns only once Pub/Sub recorded it (without it an ack is sent asynchronously and lost when the process dies): "+
				"enable it (gcloud pubsub subscriptions update %s --enable-exactly-once-delivery), or let the adapter do it with create=true (the default)", sub.Name, lastSegment(sub.Name))
	}
	if opts.MaxAttempts > 0 && !b.opts.DisableCreate {
		dcfg, err := b.subscriptionConfig(op, driver.SubscriberOptions{Topic: opts.DeadLetterTopic, Group: opts.Group})
		if err != nil {
			return nil, err
		}
		if _, err := b.EnsureSubscription(ctx, dcfg); err != nil {
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
		atMostOnce:  opts.Guarantee == semantics.AtMostOnce,
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
	atMostOnce  bool // and must get one
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
	_ driver.Subscriber    = (*subscriber)(nil)
	_ driver.BatchReceiver = (*subscriber)(nil)
	_ driver.As            = (*subscriber)(nil)
)

// start runs the SDK's Receive unless it runs already, and returns the
// channel closed when it stops.
func (s *subscriber) start() (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, driver.ErrClosed
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
		d.finish()
		return
	case <-ctx.Done():
		d.finish()
		return
	}
	select {
	case <-d.done:
	case <-s.closing:
		d.finish() // not settled: give it back
	}
}

// Receive returns the next delivery.
func (s *subscriber) Receive(ctx context.Context) (driver.Delivery, error) {
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
			return nil, driver.ErrClosed
		case <-done:
		}
	}
}

// isClosing reports whether Close was called.
func (s *subscriber) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// As sets target, a **pubsub.Subscriber, to the SDK subscriber underneath.
func (s *subscriber) As(target any) bool {
	if t, ok := target.(**ps.Subscriber); ok && t != nil {
		*t = s.sub
		return true
	}
	return false
}

// ReceiveBatch waits for one delivery, then adds those already waiting.
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	return driver.FillBatch(ctx, buf, s.Receive, driver.Ready(s.ch))
}

// Close stops receiving: deliveries not settled yet are nacked (a pending
// delayed Nack is cut short) so that the broker redelivers them at once,
// and Close waits, no longer than ctx, for the client to finish its
// shutdown, which sends the last acks and nacks. The client sends them
// before it closes its stream, so a server may hand a nacked message back
// on that closing stream, and then it comes back only after its ack
// deadline (seen with pstest on a loaded machine, about once in a hundred
// closes): nothing is lost, but "at once" is the usual case, not a
// promise. When ctx ends first, Close
// returns an error of kind Canceled naming the subscription, and the
// shutdown goes on in the background (calling the driver's Close again
// waits for it).
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
		return driver.Errorf(semantics.Canceled, "gcppubsub: close subscriber",
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
	if v, ok := attrs[driver.HeaderID]; ok {
		msg.ID = v
		delete(attrs, driver.HeaderID)
	} else {
		msg.ID = m.ID
	}
	if v, ok := attrs[driver.HeaderPublishedAt]; ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			msg.PublishedAt = t
			delete(attrs, driver.HeaderPublishedAt)
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
	// Attempt is counted, never read from an attribute: one named like
	// the reserved header was not set by queuekit and is dropped.
	delete(attrs, driver.HeaderAttempt)
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

// delivery is one Pub/Sub message handed out by Receive. Package broker
// calls Ack or Nack at most once, and again only after one failed.
type delivery struct {
	msg driver.Message
	m   *ps.Message
	s   *subscriber

	mu       sync.Mutex
	finished bool          // the SDK message was acked or nacked
	acked    *ps.AckResult // of a confirmed Ack, once sent
	done     chan struct{} // closed when finished
	timer    *time.Timer   // pending delayed nack
}

// failedAck marks a delivery whose Ack could not be confirmed.
var failedAck = new(ps.AckResult)

// resolvedOK reports whether r is resolved already, as a success.
func resolvedOK(r *ps.AckResult) bool {
	select {
	case <-r.Ready():
		st, err := r.Get(context.Background())
		return err == nil && st == ps.AcknowledgeStatusSuccess
	default:
		return false
	}
}

var errReleased = driver.Errorf(semantics.Closed, "gcppubsub", "the subscriber was closed and the delivery given back for redelivery")

func (d *delivery) Message() *driver.Message { return &d.msg }

// finish nacks the SDK message unless that or an ack was done already; it
// reports whether it did.
func (d *delivery) finish() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return false
	}
	d.finished = true
	if d.timer != nil {
		d.timer.Stop()
	}
	d.m.Nack()
	close(d.done)
	return true
}

// Ack acknowledges the message. On an exactly-once subscription (always
// under AtMostOnce) it returns once Pub/Sub has recorded the ack — after
// that the message is never redelivered — and an error when Pub/Sub
// refused it (the message will be redelivered) or ctx ended first (calling
// Ack again waits for the same confirmation). Otherwise the client sends
// the ack within 100ms (and before Close returns), and Ack returns at once.
func (d *delivery) Ack(ctx context.Context) error {
	const op = "gcppubsub: ack"
	d.mu.Lock()
	r := d.acked
	if r == nil {
		if d.finished || d.s.isClosing() {
			d.mu.Unlock()
			d.finish() // given back by Close, if its callback has not yet
			return errReleased
		}
		d.finished = true
		if d.timer != nil {
			d.timer.Stop()
		}
		if d.s.exactlyOnce {
			r = d.m.AckWithResult()
			d.acked = r
			if d.s.atMostOnce && resolvedOK(r) {
				// Only a client that does not (yet) know the subscription
				// has exactly-once delivery resolves the result at once:
				// the ack is queued like any other, and may be lost.
				d.acked = failedAck
			}
		} else {
			d.m.Ack()
		}
		close(d.done)
		if d.s.counted {
			d.s.attempts.forget(attemptKey{d.s.subName, d.m.ID})
		}
	}
	r = d.acked
	d.mu.Unlock()
	if r == nil {
		return nil
	}
	if r == failedAck {
		return driver.Errorf(semantics.Permanent, op,
			"the client did not treat %s as delivered with exactly-once delivery, so its ack cannot be confirmed (at-most-once: do not handle it)", d.msg.ID)
	}
	select {
	case <-r.Ready():
	case <-ctx.Done():
		return driver.Errorf(semantics.Canceled, op, "waiting for Pub/Sub to confirm the ack of %s (call Ack again to wait on): %w", d.msg.ID, ctx.Err())
	}
	st, err := r.Get(ctx)
	if err == nil && st == ps.AcknowledgeStatusSuccess {
		return nil
	}
	kind := semantics.Permanent // the ack ID expired or was refused: the message will be redelivered
	if st == ps.AcknowledgeStatusOther {
		kind = semantics.Transient
	}
	if err == nil {
		return driver.Errorf(kind, op, "Pub/Sub did not confirm the ack of %s (status %d); it will be redelivered", d.msg.ID, st)
	}
	return driver.Errorf(kind, op, "Pub/Sub did not confirm the ack of %s; it will be redelivered: %w", d.msg.ID, err)
}

// Nack gives the message back. With delay 0 it is redelivered at once
// (after the subscription's RetryPolicy backoff, if it has one). With delay
// > 0 the subscriber keeps the message leased — the client keeps extending
// its ack deadline, so the broker hands it to nobody — and nacks it when
// delay has passed: the broker redelivers it no sooner than delay. The
// delivery keeps its flow-control slot (and, on an ordered subscription,
// its key's turn) meanwhile. The streaming client does not expose ack IDs,
// so a single ModifyAckDeadline(delay) is not possible.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if delay <= 0 {
		if !d.finish() {
			return errReleased
		}
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return errReleased
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(delay, func() { d.finish() })
	}
	return nil
}
