package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
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
// first declared: a later subscriber of the group with another MaxAttempts
// or DeadLetterTopic gets an InvalidArgument error. Single active consumer
// is the exception: an ordered subscriber of a queue declared without it
// (by Declare) consumes only while it holds the group's activity lock (see
// active.go), which gives the same one-at-a-time order and takeover.
//
// Guarantee AtMostOnce acknowledges each message when it is received,
// before Receive hands it out, and waits until RabbitMQ has processed the
// acknowledgement: a crash afterwards never redelivers it. Ack is then a
// no-op and Nack an error (the message cannot come back).
//
// Names are checked first, before any I/O (InvalidArgument): topic and
// dead-letter topic are routing keys of at most 255 bytes of UTF-8, and the
// group's queue names must leave room for the delay queues' suffix.
func (b *Broker) NewSubscriber(ctx context.Context, opts driver.SubscriberOptions) (driver.Subscriber, error) {
	s, err := b.plan("rabbitmq: subscribe", opts)
	if err != nil {
		return nil, err
	}
	sc, err := s.open(ctx)
	switch {
	case err == errStandby:
		// Receive takes over when the active consumer goes.
	case err != nil:
		return nil, err
	default:
		s.cur = sc
	}
	return s, nil
}

// plan checks opts against RabbitMQ's rules, before any I/O, and returns
// the subscriber they describe, neither declared nor consuming.
func (b *Broker) plan(op string, opts driver.SubscriberOptions) (*subscriber, error) {
	if err := checkName(op, "topic", opts.Topic, maxNameLen); err != nil {
		return nil, err
	}
	if err := checkName(op, "group", opts.Group, maxNameLen); err != nil {
		return nil, err
	}
	var amo bool
	switch opts.Guarantee {
	case semantics.AtLeastOnce, semantics.EffectivelyOnce:
	case semantics.AtMostOnce:
		amo = true
	default:
		return nil, driver.Errorf(semantics.InvalidArgument, op, "unknown guarantee %v", opts.Guarantee)
	}
	switch opts.Ordering {
	case semantics.Unordered, semantics.PerKey:
	default:
		return nil, driver.Errorf(semantics.InvalidArgument, op, "unknown ordering %v", opts.Ordering)
	}
	prefetch := opts.Prefetch
	if prefetch == 0 {
		prefetch = b.opts.Prefetch
	}
	if prefetch < 0 || prefetch > 65535 {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "prefetch %d is not within 1..65535", prefetch)
	}
	s := &subscriber{
		b:        b,
		opts:     opts,
		queue:    b.QueueName(opts.Topic, opts.Group),
		prefetch: prefetch,
		quorum:   b.opts.QueueType == Quorum,
		amo:      amo,
		done:     make(chan struct{}),
	}
	if err := checkQueue(op, "the group's queue name", s.queue); err != nil {
		return nil, err
	}
	s.deadLetter = s.quorum && opts.MaxAttempts > 0
	if s.deadLetter {
		if opts.DeadLetterTopic == "" {
			opts.DeadLetterTopic = driver.DeadLetterTopic(opts.Topic)
			s.opts.DeadLetterTopic = opts.DeadLetterTopic
		}
		if err := checkName(op, "dead-letter topic", opts.DeadLetterTopic, maxNameLen); err != nil {
			return nil, err
		}
		s.dlq = b.QueueName(opts.DeadLetterTopic, opts.Group)
		if err := checkQueue(op, "the group's dead-letter queue name", s.dlq); err != nil {
			return nil, err
		}
	}
	return s, nil
}

type subscriber struct {
	b          *Broker
	opts       driver.SubscriberOptions
	queue      string
	dlq        string // the group's queue on the dead-letter topic, with deadLetter
	prefetch   int
	quorum     bool
	deadLetter bool
	amo        bool // at most once: acknowledged on receipt
	existingOK bool // Declare: keep a queue that exists with other arguments
	exclusive  bool // PerKey on a queue without single active consumer: consume while holding the group's activity lock (active.go)

	openMu sync.Mutex // serialises (re)subscribing
	mu     sync.Mutex
	cur    *subChan
	closed bool
	done   chan struct{}

	retryMu sync.Mutex
	retry   *pubChan // confirm-mode channel for delayed nacks
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
// the dead-letter queue, on a channel of their own, and records them in
// the topology registry.
func (s *subscriber) declare(ctx context.Context) error {
	const op = "rabbitmq: subscribe"
	b := s.b
	ch, _, err := b.sub.channel(ctx)
	if err != nil {
		return wrap(op, err)
	}
	// A failed declaration closes its channel: reopen one after it.
	defer func() {
		if ch != nil {
			ch.Close()
		}
	}()
	reopen := func() error {
		ch.Close()
		var oerr error
		ch, _, oerr = b.sub.channel(ctx)
		return wrap(op, oerr)
	}
	if err := b.declareExchange(ch); err != nil {
		return wrap(op+": exchange "+strconv.Quote(b.opts.Exchange), err)
	}
	if b.opts.Passive {
		if _, err := ch.QueueDeclarePassive(s.queue, true, false, false, false, nil); err != nil {
			return wrap(op+": queue "+strconv.Quote(s.queue), err)
		}
		return nil
	}
	args := s.queueArgs()
	_, err = ch.QueueDeclare(s.queue, true, false, false, false, args)
	if isPreconditionFailed(err) && !s.existingOK {
		// Single active consumer is a queue argument, fixed when the
		// queue was first declared (by Declare, or by a subscriber with
		// another Ordering). Where it is the only difference, go on: an
		// ordered subscriber then consumes only while it holds the
		// group's activity lock (active.go), an unordered one shares the
		// queue's single active consumer.
		if rerr := reopen(); rerr != nil {
			return rerr
		}
		alt := maps.Clone(args)
		if s.opts.Ordering == semantics.PerKey {
			delete(alt, "x-single-active-consumer")
		} else {
			alt["x-single-active-consumer"] = true
		}
		if _, aerr := ch.QueueDeclare(s.queue, true, false, false, false, alt); aerr == nil {
			err = nil
			s.exclusive = s.opts.Ordering == semantics.PerKey
		}
	}
	switch {
	case err == nil:
		b.declared(s.queue)
	case s.existingOK && isPreconditionFailed(err):
		// Declare: the queue exists with settings of its own; keep it.
		if err := reopen(); err != nil {
			return err
		}
	default:
		return wrap(op+": queue "+strconv.Quote(s.queue), err)
	}
	if err := ch.QueueBind(s.queue, s.opts.Topic, b.opts.Exchange, false, nil); err != nil {
		return wrap(op+": bind "+strconv.Quote(s.queue), err)
	}
	entries := []entry{{Role: RoleGroup, Topic: s.opts.Topic, Group: s.opts.Group, Queue: s.queue}}
	if s.deadLetter {
		dlt := s.opts.DeadLetterTopic
		if _, err := ch.QueueDeclare(s.dlq, true, false, false, false, amqp.Table{"x-queue-type": b.opts.QueueType}); err != nil {
			// 406: the dead-letter queue exists with arguments of its own
			// (someone subscribes to it with options): fine, it exists.
			if !isPreconditionFailed(err) {
				return wrap(op+": dead-letter queue "+strconv.Quote(s.dlq), err)
			}
			if err := reopen(); err != nil {
				return err
			}
		} else {
			b.declared(s.dlq)
		}
		if err := ch.QueueBind(s.dlq, dlt, b.opts.Exchange, false, nil); err != nil {
			return wrap(op+": bind "+strconv.Quote(s.dlq), err)
		}
		entries = append(entries, entry{Role: RoleDeadLetter, Topic: dlt, Group: s.opts.Group, Queue: s.dlq})
		b.record(ctx, dlt, entry{Role: RoleGroup, Topic: dlt, Group: s.opts.Group, Queue: s.dlq})
		b.bindSchedule(ctx, s.opts.Topic, dlt)
	} else {
		b.bindSchedule(ctx, s.opts.Topic)
	}
	b.record(ctx, s.opts.Topic, entries...)
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
	if s.exclusive {
		if err := s.lockActive(ctx); err != nil {
			ch.Close()
			return nil, err
		}
	}
	deliveries, err := ch.Consume(s.queue, consumerTag, false, false, false, false, nil)
	if err != nil {
		ch.Close()
		return nil, wrap(op+": consume "+strconv.Quote(s.queue), err)
	}
	return newSubChan(ch, deliveries, s), nil
}

// errStandby is open's answer when another subscriber holds the group's
// activity lock: it waits for its turn, as a single active consumer's
// standbys do.
var errStandby = errors.New("another consumer of the group is active")

// standbyPoll is how often a standby subscriber tries the lock again.
const standbyPoll = 250 * time.Millisecond

// current returns the consuming channel, subscribing again after a loss.
func (s *subscriber) current(ctx context.Context) (*subChan, error) {
	s.mu.Lock()
	sc, closed := s.cur, s.closed
	s.mu.Unlock()
	if closed {
		return nil, driver.ErrClosed
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
		return nil, driver.ErrClosed
	}
	if sc != nil {
		return sc, nil
	}
	var err error
	for {
		if sc, err = s.open(ctx); err != errStandby {
			break
		}
		select {
		case <-time.After(standbyPoll):
		case <-ctx.Done():
			return nil, driver.Canceled("rabbitmq: receive", ctx.Err())
		case <-s.done:
			return nil, driver.ErrClosed
		}
	}
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = sc.close()
		return nil, driver.ErrClosed
	}
	s.cur = sc
	return sc, nil
}

// lost forgets a consuming channel whose deliveries ended (channel or
// connection closed, or the broker cancelled the consumer). Closing it
// sends the acks it holds if it is still open; those of a dead channel
// are dropped with it (delivery tags are the channel's own).
func (s *subscriber) lost(sc *subChan) {
	s.mu.Lock()
	if s.cur == sc {
		s.cur = nil
	}
	s.mu.Unlock()
	go sc.close()
}

// Receive returns the next delivery. When the channel or connection is
// lost it subscribes again (waiting for the reconnection as long as ctx
// allows); deliveries received before are then redelivered by the broker
// and their Ack fails.
func (s *subscriber) Receive(ctx context.Context) (driver.Delivery, error) {
	var buf [1]driver.Delivery
	if _, err := s.ReceiveBatch(ctx, buf[:]); err != nil {
		return nil, err
	}
	return buf[0], nil
}

// ReceiveBatch blocks like Receive for one delivery, then adds those
// already prefetched, up to len(buf).
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	const op = "rabbitmq: receive"
	if len(buf) == 0 {
		return 0, nil
	}
	var got [64]*delivery
	for {
		sc, err := s.current(ctx)
		if err != nil {
			return 0, err
		}
		var (
			d  amqp.Delivery
			ok bool
		)
		select {
		case d, ok = <-sc.deliveries:
		case <-ctx.Done():
			return 0, driver.Canceled(op, ctx.Err())
		case <-s.done:
			return 0, driver.ErrClosed
		}
		if !ok {
			s.lost(sc)
			continue
		}
		ds := got[:0]
		if len(buf) > len(got) {
			ds = make([]*delivery, 0, len(buf))
		}
		ds = append(ds, s.delivery(sc, &d))
	fill:
		for len(ds) < len(buf) {
			select {
			case d, ok := <-sc.deliveries:
				if !ok {
					break fill // the next call resubscribes
				}
				ds = append(ds, s.delivery(sc, &d))
			default:
				break fill
			}
		}
		if s.amo {
			if err := sc.ackOnReceipt(ds, s.prefetch); err != nil {
				// Whether RabbitMQ recorded the acks is unknown: hand
				// none out. Those it did not record go to another
				// consumer; the others are lost, as at-most-once allows.
				s.b.opts.Logger.Warn("queuekit/rabbitmq: at-most-once: acknowledging on receipt failed; the messages are not handed out", "queue", s.queue, "messages", len(ds), "error", err)
				s.lost(sc)
				continue
			}
		} else {
			sc.received(ds) // before anything can settle them
		}
		for i, d := range ds {
			if s.opts.AckTimeout > 0 && !s.amo {
				d.timer = time.AfterFunc(s.opts.AckTimeout, d.expire)
			}
			buf[i] = d
		}
		return len(ds), nil
	}
}

// As sets target, a **amqp.Channel or **amqp.Connection, to the consuming
// channel or its connection, as they are now (they are replaced after a
// connection loss).
func (s *subscriber) As(target any) bool {
	s.mu.Lock()
	sc := s.cur
	s.mu.Unlock()
	switch t := target.(type) {
	case **amqp.Channel:
		if sc == nil || sc.ch.IsClosed() {
			return false
		}
		*t = sc.ch
		return true
	case **amqp.Connection:
		conn := s.b.sub.current()
		if conn == nil {
			return false
		}
		*t = conn
		return true
	}
	return false
}

// Close sends the acks the channel holds, cancels the consumer (so that
// the queue has applied those acks) and closes the channel: the broker
// requeues every delivery not yet acknowledged, and later Acks of them
// fail.
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
		if cerr := sc.close(); cerr != nil && cerr != amqp.ErrClosed {
			err = wrap("rabbitmq: subscriber close", cerr)
		}
	}
	if s.exclusive {
		s.unlockActive()
	}
	s.retryMu.Lock()
	if s.retry != nil {
		_ = s.retry.close()
		s.retry = nil
	}
	s.retryMu.Unlock()
	return err
}

// delivery wraps an AMQP delivery received on sc.
func (s *subscriber) delivery(sc *subChan, ad *amqp.Delivery) *delivery {
	d := &delivery{s: s, sc: sc, raw: *ad}
	d.msg = s.message(ad)
	return d
}

// message turns an AMQP delivery into a Message: ID from message-id, key
// and user headers from the table, Attempt from x-delivery-count (quorum
// queues) plus the deliveries before a delayed nack, and, for a dead
// letter, its reason and original topic from x-death. Only values of the
// types RabbitMQ and the adapter write count: a string header, as a
// publisher could write, never sets the attempt.
func (s *subscriber) message(ad *amqp.Delivery) driver.Message {
	m := driver.Message{ID: ad.MessageId, Payload: ad.Body, Topic: s.opts.Topic, PublishedAt: ad.Timestamp}
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
		if ts, ok := h[driver.HeaderPublishedAt].(string); ok {
			if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
				m.PublishedAt = t
			}
		}
	}
	death, viaDelay := lastDeath(h)
	if s.quorum {
		m.Attempt = 1
		if ad.Redelivered {
			m.Attempt += int(toInt(h["x-delivery-count"]))
		}
		if viaDelay {
			m.Attempt += int(toInt(h[headerBaseAttempt]))
		}
	}
	if death != nil {
		reason, _ := death["reason"].(string)
		m.SetHeader(driver.HeaderDeadReason, deadReason(reason))
		topic, _ := h[headerDelayTopic].(string)
		if ex, _ := death["exchange"].(string); ex != "" || topic == "" {
			if keys, ok := death["routing-keys"].([]any); ok && len(keys) > 0 {
				topic, _ = keys[0].(string)
			}
		}
		if topic != "" {
			m.SetHeader(driver.HeaderOriginalTopic, topic)
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

// toInt reads an integer header as RabbitMQ and the adapter write it; other
// types (a string a publisher wrote) are 0.
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
	}
	return 0
}

// delivery is one AMQP delivery.
type delivery struct {
	settle  driver.Settlement // Ack and Nack against the AckTimeout timer
	s       *subscriber
	sc      *subChan // the channel it came on
	raw     amqp.Delivery
	msg     driver.Message
	timer   *time.Timer
	expired atomic.Bool
}

func (d *delivery) Message() *driver.Message { return &d.msg }

// expire requeues a delivery left unsettled for AckTimeout.
func (d *delivery) expire() {
	if first, _ := d.settle.Nack(); first {
		d.expired.Store(true)
		_ = d.sc.settle(d.raw.DeliveryTag, func() error { return d.raw.Nack(false, true) })
	}
}

func (d *delivery) stopTimer() {
	if d.timer != nil {
		d.timer.Stop()
	}
}

func (d *delivery) late(op string, err error) error {
	if d.expired.Load() {
		return driver.Errorf(semantics.Transient, op, "message %s: AckTimeout %v passed before settling: it was requeued and is redelivered", d.msg.ID, d.s.opts.AckTimeout)
	}
	return err
}

// settleErr explains a failed ack or nack.
func settleErr(op string, id string, err error) error {
	if err == amqp.ErrClosed {
		return driver.Errorf(semantics.Transient, op, "message %s: its channel closed first (connection lost or subscriber closed): the broker redelivers it", id)
	}
	return wrap(op, err)
}

// Ack acknowledges the delivery on its channel. The ack is coalesced with
// others (see acks.go): Ack returns nil once it is recorded, and it
// reaches RabbitMQ within a millisecond — with the run of acks it
// completes, on Close, or after the 1ms bound. Ack fails (kind Transient: the broker redelivers
// the message) when the channel is already closed, or when the write
// carrying the ack failed in the call; a later write's failure is logged
// with the number of acks lost. Under AtMostOnce the delivery was
// acknowledged on receipt, and Ack returns nil.
func (d *delivery) Ack(ctx context.Context) error {
	const op = "rabbitmq: ack"
	if d.s.amo {
		return nil
	}
	if first, err := d.settle.Ack(); !first {
		return d.late(op, err)
	}
	d.stopTimer()
	if err := d.sc.ack(d.raw.DeliveryTag); err != nil {
		return settleErr(op, d.msg.ID, err)
	}
	return nil
}

// Nack asks for redelivery. With delay 0 the message is requeued at once;
// otherwise it is moved to a delay queue whose TTL (delay rounded up to one
// of ten steps per decade, at most 25% more) dead-letters it back to the
// group's queue. On a quorum queue with MaxAttempts, a message nacked on
// its MaxAttempts-th attempt is rejected instead, and RabbitMQ dead-letters
// it. Under AtMostOnce the message was acknowledged on receipt and cannot
// come back: Nack fails with kind Unsupported.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	const op = "rabbitmq: nack"
	s := d.s
	if s.amo {
		return driver.Errorf(semantics.Unsupported, op, "message %s was acknowledged when it was received (at-most-once): it cannot be redelivered", d.msg.ID)
	}
	if delay > maxDelay {
		return driver.Errorf(semantics.InvalidArgument, op, "delay %v is over RabbitMQ's longest message TTL, %v", delay, maxDelay)
	}
	if first, err := d.settle.Nack(); !first {
		return d.late(op, err)
	}
	d.stopTimer()
	if s.deadLetter && d.msg.Attempt >= s.opts.MaxAttempts {
		if err := d.sc.settle(d.raw.DeliveryTag, func() error { return d.raw.Reject(false) }); err != nil {
			return settleErr(op, d.msg.ID, err)
		}
		return nil
	}
	requeue := func() error { return d.raw.Nack(false, true) }
	if delay <= 0 {
		if err := d.sc.settle(d.raw.DeliveryTag, requeue); err != nil {
			return settleErr(op, d.msg.ID, err)
		}
		return nil
	}
	if err := s.delay(ctx, d, delay); err != nil {
		// Not delayed: requeue now rather than leave it unsettled.
		if nerr := d.sc.settle(d.raw.DeliveryTag, requeue); nerr != nil {
			return settleErr(op, d.msg.ID, nerr)
		}
		return driver.WrapError(semantics.Transient, op, fmt.Errorf("message %s requeued without its delay of %v: %w", d.msg.ID, delay, err))
	}
	if err := d.sc.ack(d.raw.DeliveryTag); err != nil {
		// The delayed copy exists; the original is redelivered too.
		return settleErr(op, d.msg.ID, err)
	}
	return nil
}

// isPreconditionFailed reports a 406 PRECONDITION_FAILED channel error,
// such as a queue declared again with other arguments.
func isPreconditionFailed(err error) bool {
	ae, ok := err.(*amqp.Error)
	return ok && ae.Code == amqp.PreconditionFailed
}
