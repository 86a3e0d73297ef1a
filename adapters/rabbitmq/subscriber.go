package rabbitmq

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// NewSubscriber declares (or with Passive verifies) the queue of
// opts.Group bound to opts.Topic, and starts consuming from it with
// prefetch opts.Prefetch (default Options.Prefetch).
//
// The queue is durable, of Options.QueueType. With quorum queues and
// MaxAttempts > 0 it dead-letters to DeadLetterTopic on the same exchange
// (x-dead-letter-exchange, x-delivery-limit = MaxAttempts-1, at-least-once
// dead-lettering), and the group's queue for DeadLetterTopic is declared as
// well so that no dead letter is dropped before anyone subscribes to it.
// Ordering PerKey makes the queue single-active-consumer: one subscriber
// of the group receives at a time, in queue order, and another takes over
// when it goes away. These are queue arguments, fixed when the queue is
// first declared: a later subscriber of the group with other settings gets
// an InvalidArgument error.
func (b *Broker) NewSubscriber(ctx context.Context, opts broker.SubscriberOptions) (broker.Subscriber, error) {
	const op = "rabbitmq: subscribe"
	if err := opts.Validate(op); err != nil {
		return nil, err
	}
	if b.isClosed() {
		return nil, broker.ErrClosed
	}
	opts = opts.WithDefaults()
	prefetch := opts.Prefetch
	if prefetch == 0 {
		prefetch = b.opts.Prefetch
	}
	if prefetch > 65535 {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "prefetch %d is over 65535", prefetch)
	}
	s := &subscriber{
		b:        b,
		opts:     opts,
		queue:    b.QueueName(opts.Topic, opts.Group),
		prefetch: prefetch,
		quorum:   b.opts.QueueType == Quorum,
		done:     make(chan struct{}),
	}
	s.deadLetter = s.quorum && opts.MaxAttempts > 0
	sc, err := s.open(ctx)
	if err != nil {
		return nil, err
	}
	s.cur = sc
	return s, nil
}

type subscriber struct {
	b          *Broker
	opts       broker.SubscriberOptions
	queue      string
	prefetch   int
	quorum     bool
	deadLetter bool

	openMu sync.Mutex // serialises (re)subscribing
	mu     sync.Mutex
	cur    *subChan
	closed bool
	done   chan struct{}

	retryMu sync.Mutex
	retry   *pubChan // confirm-mode channel for delayed nacks
}

// subChan is one consuming channel.
type subChan struct {
	ch         *amqp.Channel
	deliveries <-chan amqp.Delivery
	closes     chan *amqp.Error
}

// queueArgs are the arguments of the group's queue.
func (s *subscriber) queueArgs() amqp.Table {
	args := amqp.Table{"x-queue-type": s.b.opts.QueueType}
	if s.deadLetter {
		args["x-delivery-limit"] = int64(s.opts.MaxAttempts - 1)
		args["x-dead-letter-exchange"] = s.b.opts.Exchange
		args["x-dead-letter-routing-key"] = s.opts.DeadLetterTopic
		args["x-dead-letter-strategy"] = "at-least-once"
		args["x-overflow"] = "reject-publish"
	}
	if s.opts.Ordering == semantics.PerKey {
		args["x-single-active-consumer"] = true
	}
	return args
}

// declare declares the exchange, the group's queue and its binding, and
// the dead-letter queue, on a channel of their own.
func (s *subscriber) declare(ctx context.Context) error {
	const op = "rabbitmq: subscribe"
	b := s.b
	ch, _, err := b.sub.channel(ctx)
	if err != nil {
		return wrap(op, err)
	}
	defer ch.Close()
	if err := b.declareExchange(ch); err != nil {
		return wrap(op+": exchange "+strconv.Quote(b.opts.Exchange), err)
	}
	if b.opts.Passive {
		if _, err := ch.QueueDeclarePassive(s.queue, true, false, false, false, nil); err != nil {
			return wrap(op+": queue "+strconv.Quote(s.queue), err)
		}
		return nil
	}
	if _, err := ch.QueueDeclare(s.queue, true, false, false, false, s.queueArgs()); err != nil {
		return wrap(op+": queue "+strconv.Quote(s.queue), err)
	}
	b.declared(s.queue)
	if err := ch.QueueBind(s.queue, s.opts.Topic, b.opts.Exchange, false, nil); err != nil {
		return wrap(op+": bind "+strconv.Quote(s.queue), err)
	}
	if !s.deadLetter {
		return nil
	}
	dlq := b.QueueName(s.opts.DeadLetterTopic, s.opts.Group)
	if _, err := ch.QueueDeclare(dlq, true, false, false, false, amqp.Table{"x-queue-type": b.opts.QueueType}); err != nil {
		// 406: the dead-letter queue exists with arguments of its own
		// (someone subscribes to it with options): fine, it exists.
		if ae, ok := err.(*amqp.Error); !ok || ae.Code != amqp.PreconditionFailed {
			return wrap(op+": dead-letter queue "+strconv.Quote(dlq), err)
		}
		if ch, _, err = b.sub.channel(ctx); err != nil {
			return wrap(op, err)
		}
		defer ch.Close()
	} else {
		b.declared(dlq)
	}
	if err := ch.QueueBind(dlq, s.opts.DeadLetterTopic, b.opts.Exchange, false, nil); err != nil {
		return wrap(op+": bind "+strconv.Quote(dlq), err)
	}
	return nil
}

// open declares the topology and starts consuming on a new channel.
func (s *subscriber) open(ctx context.Context) (*subChan, error) {
	const op = "rabbitmq: subscribe"
	if err := s.declare(ctx); err != nil {
		return nil, err
	}
	ch, _, err := s.b.sub.channel(ctx)
	if err != nil {
		return nil, wrap(op, err)
	}
	if err := ch.Qos(s.prefetch, 0, false); err != nil {
		ch.Close()
		return nil, wrap(op, err)
	}
	deliveries, err := ch.Consume(s.queue, "", false, false, false, false, nil)
	if err != nil {
		ch.Close()
		return nil, wrap(op+": consume "+strconv.Quote(s.queue), err)
	}
	return &subChan{ch: ch, deliveries: deliveries, closes: ch.NotifyClose(make(chan *amqp.Error, 1))}, nil
}

// current returns the consuming channel, subscribing again after a loss.
func (s *subscriber) current(ctx context.Context) (*subChan, error) {
	s.mu.Lock()
	sc, closed := s.cur, s.closed
	s.mu.Unlock()
	if closed {
		return nil, broker.ErrClosed
	}
	if sc != nil {
		return sc, nil
	}
	s.openMu.Lock()
	defer s.openMu.Unlock()
	s.mu.Lock()
	sc, closed = s.cur, s.closed
	s.mu.Unlock()
	if closed {
		return nil, broker.ErrClosed
	}
	if sc != nil {
		return sc, nil
	}
	sc, err := s.open(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		sc.ch.Close()
		return nil, broker.ErrClosed
	}
	s.cur = sc
	return sc, nil
}

// lost forgets a consuming channel whose deliveries ended (channel or
// connection closed, or the broker cancelled the consumer).
func (s *subscriber) lost(sc *subChan) {
	s.mu.Lock()
	if s.cur == sc {
		s.cur = nil
	}
	s.mu.Unlock()
	go sc.ch.Close()
}

// Receive returns the next delivery. When the channel or connection is
// lost it subscribes again (waiting for the reconnection as long as ctx
// allows); deliveries received before are then redelivered by the broker
// and their Ack fails.
func (s *subscriber) Receive(ctx context.Context) (broker.Delivery, error) {
	for {
		sc, err := s.current(ctx)
		if err != nil {
			return nil, err
		}
		select {
		case d, ok := <-sc.deliveries:
			if !ok {
				s.lost(sc)
				continue
			}
			return s.delivery(&d), nil
		case <-ctx.Done():
			return nil, broker.WrapError(semantics.Transient, "rabbitmq: receive", ctx.Err())
		case <-s.done:
			return nil, broker.ErrClosed
		}
	}
}

// ReceiveBatch blocks like Receive for one delivery, then adds those
// already prefetched, up to len(buf).
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []broker.Delivery) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	for {
		sc, err := s.current(ctx)
		if err != nil {
			return 0, err
		}
		select {
		case d, ok := <-sc.deliveries:
			if !ok {
				s.lost(sc)
				continue
			}
			buf[0] = s.delivery(&d)
		case <-ctx.Done():
			return 0, broker.WrapError(semantics.Transient, "rabbitmq: receive", ctx.Err())
		case <-s.done:
			return 0, broker.ErrClosed
		}
		n := 1
		for n < len(buf) {
			select {
			case d, ok := <-sc.deliveries:
				if !ok {
					return n, nil // the next call resubscribes
				}
				buf[n] = s.delivery(&d)
				n++
				continue
			default:
			}
			break
		}
		return n, nil
	}
}

// Close stops consuming and closes the channel: the broker requeues every
// delivery not yet acknowledged, and later Acks of them fail.
func (s *subscriber) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	sc := s.cur
	s.cur = nil
	s.mu.Unlock()
	var err error
	if sc != nil {
		if cerr := sc.ch.Close(); cerr != nil && cerr != amqp.ErrClosed {
			err = wrap("rabbitmq: subscriber close", cerr)
		}
	}
	s.retryMu.Lock()
	if s.retry != nil {
		s.retry.ch.Close()
		s.retry = nil
	}
	s.retryMu.Unlock()
	return err
}

// delivery wraps an AMQP delivery.
func (s *subscriber) delivery(ad *amqp.Delivery) *delivery {
	d := &delivery{s: s, raw: *ad}
	d.msg = s.message(ad)
	if s.opts.AckTimeout > 0 {
		d.timer = time.AfterFunc(s.opts.AckTimeout, d.expire)
	}
	return d
}

// Internal headers that are not handed to the user.
func internalHeader(k string) bool {
	switch k {
	case headerKey, broker.HeaderPublishedAt, headerBaseAttempt, headerDelayTopic, "x-delivery-count", "x-death":
		return true
	}
	return strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
}

// message turns an AMQP delivery into a Message: ID from message-id, key
// and user headers from the table, Attempt from x-delivery-count (quorum
// queues) plus the deliveries before a delayed nack, and, for a dead
// letter, its reason and original topic from x-death.
func (s *subscriber) message(ad *amqp.Delivery) broker.Message {
	m := broker.Message{ID: ad.MessageId, Payload: ad.Body, Topic: s.opts.Topic, PublishedAt: ad.Timestamp}
	h := ad.Headers
	if n := len(h); n > 0 {
		var users int
		for k := range h {
			if !internalHeader(k) {
				users++
			}
		}
		if users > 0 {
			m.Headers = make(map[string]string, users+2)
			for k, v := range h {
				if !internalHeader(k) {
					m.Headers[k] = stringify(v)
				}
			}
		}
		if k, ok := h[headerKey].(string); ok {
			m.Key = k
		}
		if ts, ok := h[broker.HeaderPublishedAt].(string); ok {
			if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
				m.PublishedAt = t
			}
		}
	}
	death, viaDelay := lastDeath(h)
	if s.quorum {
		m.Attempt = int(toInt(h["x-delivery-count"])) + 1
		if viaDelay {
			m.Attempt += int(toInt(h[headerBaseAttempt]))
		}
	}
	if death != nil {
		reason, _ := death["reason"].(string)
		m.SetHeader(broker.HeaderDeadReason, deadReason(reason))
		topic, _ := h[headerDelayTopic].(string)
		if ex, _ := death["exchange"].(string); ex != "" || topic == "" {
			if keys, ok := death["routing-keys"].([]any); ok && len(keys) > 0 {
				topic, _ = keys[0].(string)
			}
		}
		if topic != "" {
			m.SetHeader(broker.HeaderOriginalTopic, topic)
		}
	}
	return m
}

// deadReason explains an x-death reason.
func deadReason(reason string) string {
	switch reason {
	case "delivery_limit":
		return "delivery_limit: delivered MaxAttempts times without an ack (RabbitMQ x-delivery-limit)"
	case "rejected":
		return "rejected: nacked at MaxAttempts"
	case "expired":
		return "expired: message TTL"
	case "maxlen":
		return "maxlen: queue length limit"
	}
	return reason
}

// lastDeath returns the most recent x-death entry that is not the expiry
// of one of our delay queues (nil when the message is no dead letter), and
// whether the message's last death was such an expiry, that is whether it
// came back from a delayed nack.
func lastDeath(h amqp.Table) (amqp.Table, bool) {
	deaths, _ := h["x-death"].([]any)
	viaDelay := false
	for i, e := range deaths {
		t, ok := e.(amqp.Table)
		if !ok {
			continue
		}
		q, _ := t["queue"].(string)
		if isDelayQueue(q) {
			if i == 0 {
				viaDelay = true
			}
			continue
		}
		return t, viaDelay
	}
	return nil, viaDelay
}

func stringify(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

func toInt(v any) int64 {
	switch v := v.(type) {
	case int:
		return int64(v)
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case int64:
		return v
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

// delivery is one AMQP delivery.
type delivery struct {
	settle  broker.Settlement
	s       *subscriber
	raw     amqp.Delivery
	msg     broker.Message
	timer   *time.Timer
	expired atomic.Bool
}

func (d *delivery) Message() *broker.Message { return &d.msg }

// expire requeues a delivery left unsettled for AckTimeout.
func (d *delivery) expire() {
	if first, _ := d.settle.Nack(); first {
		d.expired.Store(true)
		_ = d.raw.Nack(false, true)
	}
}

func (d *delivery) stopTimer() {
	if d.timer != nil {
		d.timer.Stop()
	}
}

func (d *delivery) late(op string, err error) error {
	if d.expired.Load() {
		return broker.Errorf(semantics.Transient, op, "message %s: AckTimeout %v passed before settling: it was requeued and is redelivered", d.msg.ID, d.s.opts.AckTimeout)
	}
	return err
}

// settleErr explains a failed ack or nack.
func settleErr(op string, id string, err error) error {
	if err == amqp.ErrClosed {
		return broker.Errorf(semantics.Transient, op, "message %s: its channel closed first (connection lost or subscriber closed): the broker redelivers it", id)
	}
	return wrap(op, err)
}

// Ack acknowledges the delivery on its channel.
func (d *delivery) Ack(ctx context.Context) error {
	const op = "rabbitmq: ack"
	if first, err := d.settle.Ack(); !first {
		return d.late(op, err)
	}
	d.stopTimer()
	if err := d.raw.Ack(false); err != nil {
		return settleErr(op, d.msg.ID, err)
	}
	return nil
}

// Nack asks for redelivery. With delay 0 the message is requeued at once;
// otherwise it is moved to a delay queue whose TTL (delay rounded up to one of
// ten steps per decade, at most 25% more) dead-letters it back to the group's queue. On a
// quorum queue with MaxAttempts, a message nacked on its MaxAttempts-th
// attempt is rejected instead, and RabbitMQ dead-letters it.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	const op = "rabbitmq: nack"
	if first, err := d.settle.Nack(); !first {
		return d.late(op, err)
	}
	d.stopTimer()
	s := d.s
	if s.deadLetter && d.msg.Attempt >= s.opts.MaxAttempts {
		if err := d.raw.Reject(false); err != nil {
			return settleErr(op, d.msg.ID, err)
		}
		return nil
	}
	if delay <= 0 {
		if err := d.raw.Nack(false, true); err != nil {
			return settleErr(op, d.msg.ID, err)
		}
		return nil
	}
	if err := s.delay(ctx, d, delay); err != nil {
		// Not delayed: requeue now rather than leave it unsettled.
		if nerr := d.raw.Nack(false, true); nerr != nil {
			return settleErr(op, d.msg.ID, nerr)
		}
		return broker.WrapError(semantics.Transient, op, fmt.Errorf("message %s requeued without its delay of %v: %w", d.msg.ID, delay, err))
	}
	if err := d.raw.Ack(false); err != nil {
		// The delayed copy exists; the original is redelivered too.
		return settleErr(op, d.msg.ID, err)
	}
	return nil
}
