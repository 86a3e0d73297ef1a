package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// NewSubscriber joins group opts.Group of topic opts.Topic: it creates the
// topic's stream and the group's durable consumer when they do not exist,
// sets the consumer's ack wait to opts.AckTimeout when given, and — for
// opts.Ordering PerKey — its max ack pending to 1. With opts.MaxAttempts,
// the dead-letter topic's stream is created too.
//
// Under AtLeastOnce the subscriber pulls continuously (a puller: what
// jetstream's Consume does, opts.Prefetch messages per pull); under
// AtMostOnce it pulls a batch at a time (Fetch), so that it knows when each
// delivery could be redelivered, and Ack waits for the server's reply (see
// the package doc).
func (b *Broker) NewSubscriber(ctx context.Context, opts driver.SubscriberOptions) (driver.Subscriber, error) {
	const op = "nats: subscribe"
	if err := checkTopic(op, "topic", opts.Topic); err != nil {
		return nil, err
	}
	if err := checkGroup(op, opts.Group); err != nil {
		return nil, err
	}
	if opts.MaxAttempts > 0 {
		if err := checkTopic(op, "dead-letter topic", opts.DeadLetterTopic); err != nil {
			return nil, err
		}
	}
	if opts.AckTimeout != 0 && (opts.AckTimeout < time.Millisecond || opts.AckTimeout > maxAckWait) {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "AckTimeout %v is out of range [1ms, %v]", opts.AckTimeout, maxAckWait)
	}
	if opts.Prefetch > maxPrefetch {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "Prefetch %d is over %d", opts.Prefetch, maxPrefetch)
	}
	if opts.Guarantee != semantics.AtLeastOnce && opts.Guarantee != semantics.AtMostOnce {
		return nil, driver.Errorf(semantics.Unsupported, op, "guarantee %v", opts.Guarantee)
	}
	if b.isClosed() {
		return nil, driver.ErrClosed
	}
	if opts.MaxAttempts > 0 {
		if _, err := b.stream(ctx, op, opts.DeadLetterTopic, true, true); err != nil {
			return nil, err
		}
	}
	stream, cons, err := b.group(ctx, op, opts.Topic, opts.Group, want{ackWait: opts.AckTimeout, perKey: opts.Ordering == semantics.PerKey})
	if err != nil {
		return nil, err
	}
	prefetch := opts.Prefetch
	if prefetch == 0 {
		prefetch = b.opts.Prefetch
		if opts.Guarantee == semantics.AtMostOnce {
			// What waits in the subscriber eats into its ack wait, after
			// which it is not handed out: keep little in hand.
			prefetch = min(prefetch, AtMostOncePrefetch)
		}
	}
	s := &subscriber{
		b:        b,
		opts:     opts,
		stream:   stream,
		cons:     cons,
		ackWait:  cons.CachedInfo().Config.AckWait,
		amo:      opts.Guarantee == semantics.AtMostOnce,
		prefetch: prefetch,
		closing:  make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	if s.amo {
		s.ch = make(chan item, prefetch)
		s.room = make(chan struct{}, prefetch)
		s.giveRoom(prefetch)
		go s.fetchLoop()
		return s, nil
	}
	// A pull request outlives a subscriber that dies; nats-server 2.9 may
	// then hand a redelivered message to it (and deliver the stream's
	// last message again, acked or not). Requests that expire within half
	// the ack wait are gone before what they pulled can be redelivered —
	// but a request expiring just as a redelivery is due trips the same
	// server bug, so they expire no more often than every 5s.
	expiry := min(max(s.ackWait/2, 5*time.Second), 30*time.Second)
	if err := s.startPulling(expiry); err != nil {
		return nil, wrap(op, err)
	}
	return s, nil
}

// subscriber hands out what its pull loop put in ch.
type subscriber struct {
	b        *Broker
	opts     driver.SubscriberOptions
	stream   string
	cons     jetstream.Consumer
	ackWait  time.Duration
	amo      bool
	prefetch int

	ch        chan item     // at-most-once: what fetchLoop pulled
	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	stopped   chan struct{}         // closed when pulling ended
	pull      *puller               // at-least-once
	lastErr   atomic.Pointer[error] // why pulling failed or ended
	room      chan struct{}         // at-most-once: a token per free slot of ch
}

// item is a message pulled and not yet handed out: nm under at-least-once
// (the puller's), jm under at-most-once (Fetch's). Under at-most-once,
// deadline is when the server may redeliver it at the earliest.
type item struct {
	nm       *nats.Msg
	jm       jetstream.Msg
	deadline time.Time
}

// msg returns the NATS message of it.
func (it item) msg() (subject, reply string, data []byte, h nats.Header) {
	if it.nm != nil {
		return it.nm.Subject, it.nm.Reply, it.nm.Data, it.nm.Header
	}
	return it.jm.Subject(), it.jm.Reply(), it.jm.Data(), it.jm.Headers()
}

var (
	_ driver.BatchReceiver = (*subscriber)(nil)
	_ driver.As            = (*subscriber)(nil)
)

func (s *subscriber) noteError(err error) {
	if err == nil {
		return
	}
	s.lastErr.Store(&err)
}

// fetchLoop pulls for an at-most-once subscriber: a batch per Fetch, each
// message stamped with the time the pull was sent plus the ack wait — the
// server delivered it after that send, so it cannot redeliver it before.
func (s *subscriber) fetchLoop() {
	defer close(s.stopped)
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-runCtx.Done():
		}
	}()
	wait := min(max(s.ackWait/4, 50*time.Millisecond), 5*time.Second)
	// The server's clock and ours tick alike; keep a little for drift.
	budget := s.ackWait - s.ackWait/50
	backoff := 10 * time.Millisecond
	for runCtx.Err() == nil {
		// Pull only what ch has room for: a message waiting in the
		// subscriber eats into its own ack wait.
		k := 0
		select {
		case <-s.room:
			k++
		case <-runCtx.Done():
			return
		}
		for k < s.prefetch {
			select {
			case <-s.room:
				k++
				continue
			default:
			}
			break
		}
		start := time.Now()
		fctx, fcancel := context.WithTimeout(runCtx, wait)
		batch, err := s.cons.Fetch(k, jetstream.FetchContext(fctx))
		if err != nil {
			s.giveRoom(k)
			fcancel()
			if s.fatal(err) {
				return
			}
			s.noteError(err)
			select {
			case <-time.After(backoff):
			case <-runCtx.Done():
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		deadline := start.Add(budget)
		got := 0
		for msg := range batch.Messages() {
			got++
			s.ch <- item{jm: msg, deadline: deadline} // room was taken
		}
		s.giveRoom(k - got)
		fcancel()
		if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && !errors.Is(err, nats.ErrTimeout) {
			if s.fatal(err) {
				return
			}
			s.noteError(err)
		} else {
			backoff = 10 * time.Millisecond
		}
	}
}

// giveRoom returns n slots of ch to an at-most-once fetch loop.
func (s *subscriber) giveRoom(n int) {
	for range n {
		s.room <- struct{}{}
	}
}

// took is called for each item taken out of ch.
func (s *subscriber) took() {
	if s.room != nil {
		s.room <- struct{}{}
	}
}

// fatal reports (and notes) an error after which pulling cannot go on:
// the consumer or its stream was deleted, or the connection closed.
func (s *subscriber) fatal(err error) bool {
	if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, nats.ErrConnectionClosed) {
		s.noteError(err)
		return true
	}
	return false
}

// Receive returns the next delivery.
func (s *subscriber) Receive(ctx context.Context) (driver.Delivery, error) {
	for {
		it, err := s.next(ctx)
		if err != nil {
			return nil, err
		}
		if d := s.deliver(ctx, it); d != nil {
			return d, nil
		}
	}
}

// ReceiveBatch blocks for one delivery, then adds those already pulled.
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	return driver.FillBatch(ctx, buf, s.Receive, func() (driver.Delivery, bool) {
		for {
			it, ok := s.poll()
			if !ok {
				return nil, false
			}
			if d := s.deliver(ctx, it); d != nil {
				return d, true
			}
		}
	})
}

// poll returns a pulled message without waiting.
func (s *subscriber) poll() (item, bool) {
	if s.pull != nil {
		msg, ok := s.pull.poll()
		return item{nm: msg}, ok
	}
	select {
	case it := <-s.ch:
		s.took()
		return it, true
	default:
		return item{}, false
	}
}

func (s *subscriber) next(ctx context.Context) (item, error) {
	const op = "nats: receive"
	var inbox chan *nats.Msg // at-least-once: the puller's
	if s.pull != nil {
		inbox = s.pull.mch
	}
	for {
		if it, ok := s.poll(); ok {
			return it, nil
		}
		select {
		case it := <-s.ch:
			s.took()
			return it, nil
		case msg := <-inbox:
			if s.pull.got(msg) {
				return item{nm: msg}, nil
			}
			// A status message: look again.
		case <-ctx.Done():
			return item{}, driver.Canceled(op, ctx.Err())
		case <-s.closing:
			return item{}, driver.ErrClosed
		case <-s.stopped:
			if it, ok := s.poll(); ok {
				return it, nil
			}
			select {
			case <-s.closing:
				return item{}, driver.ErrClosed
			default:
			}
			cause := errors.New("pulling stopped")
			if p := s.lastErr.Load(); p != nil {
				cause = *p
			} else if s.b.nc.IsClosed() {
				cause = nats.ErrConnectionClosed
			}
			return item{}, wrap(op, fmt.Errorf("group %q of topic %q: %w", s.opts.Group, s.opts.Topic, cause))
		}
	}
}

// deliver turns a pulled message into a delivery, or returns nil when it
// must not be handed out: under at-most-once when the server may have
// redelivered it already, and when it was delivered more than MaxAttempts
// times (its last attempt timed out): then it is dead-lettered.
func (s *subscriber) deliver(ctx context.Context, it item) driver.Delivery {
	if s.amo && !time.Now().Before(it.deadline) {
		return nil // the server redelivers it: someone else handles it
	}
	subject, reply, data, h := it.msg()
	md, ok := parseAckReply(reply)
	if !ok {
		// Not a JetStream delivery: nothing to ack it with either.
		s.noteError(fmt.Errorf("a message without JetStream metadata (reply %q)", reply))
		return nil
	}
	d := &delivery{s: s, nm: it.nm, jm: it.jm, deadline: it.deadline}
	decode(&d.m, subject, data, h, md.stream, md.streamSeq, md.delivered, time.Unix(0, md.timestamp))
	if s.opts.MaxAttempts > 0 && d.m.Attempt > s.opts.MaxAttempts {
		_ = d.deadLetter(ctx, "not settled within the ack wait on attempt "+strconv.Itoa(d.m.Attempt-1))
		return nil
	}
	return d
}

// As sets a *jetstream.Consumer to the group's consumer.
func (s *subscriber) As(target any) bool {
	if t, ok := target.(*jetstream.Consumer); ok {
		*t = s.cons
		return true
	}
	return false
}

// Close stops pulling. Under at-least-once, the messages pulled and not
// handed out are nacked, so they are redelivered at once; under
// at-most-once they come back after the ack wait. Deliveries handed out
// and not settled come back after the ack wait (unless settled later: the
// connection stays open).
func (s *subscriber) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { close(s.closing) })
	if s.pull != nil {
		// Unsubscribes the pull inbox once what the server sent is in it.
		if s.pull.sub.Drain() != nil {
			_ = s.pull.sub.Unsubscribe()
		}
	}
	var err error
	select {
	case <-s.stopped:
	case <-ctx.Done():
		err = driver.Canceled("nats: close subscriber", ctx.Err())
	}
	// Once the server has seen the inbox go, it drops the pull request
	// instead of delivering to it: only then are naks safe.
	if ferr := flush(ctx, s.b.nc); ferr != nil && err == nil && !errors.Is(ferr, nats.ErrConnectionClosed) {
		err = wrap("nats: close subscriber", ferr)
	}
	var back []*nats.Msg
	if s.pull != nil {
		for {
			msg, ok := s.pull.poll()
			if !ok {
				break
			}
			back = append(back, msg)
		}
	}
	if !s.amo {
		// Asking for the consumer's info makes the server sweep its pull
		// requests and drop ours: a nak — or the redelivery of what we
		// handed out — that found it still standing would go to it (and
		// nats-server 2.9 would then deliver the last message again).
		_, _ = s.cons.Info(ctx)
	}
	if !s.amo && len(back) > 0 {
		for _, msg := range back {
			_ = s.b.nc.Publish(msg.Reply, ackNak)
		}
		if ferr := flush(ctx, s.b.nc); ferr != nil && err == nil && !errors.Is(ferr, nats.ErrConnectionClosed) {
			err = wrap("nats: close subscriber", ferr)
		}
	}
	return err
}

// delivery is one delivery of a JetStream message: nm under
// at-least-once, jm under at-most-once.
type delivery struct {
	s        *subscriber
	nm       *nats.Msg
	jm       jetstream.Msg
	m        driver.Message
	deadline time.Time // at-most-once: when the server may redeliver it
}

// Bodies of the acks JetStream takes on a delivery's reply subject.
var (
	ackAck  = []byte("+ACK")
	ackNak  = []byte("-NAK")
	ackTerm = []byte("+TERM")
)

func (d *delivery) Message() *driver.Message { return &d.m }

// Ack acknowledges the message. Under at-least-once the ack is sent and
// not waited for (a lost ack means a redelivery). Under at-most-once Ack
// waits for the server's reply and fails unless it came before the server
// could have redelivered the message to another subscriber.
func (d *delivery) Ack(ctx context.Context) error {
	const op = "nats: ack"
	if !d.s.amo {
		return wrap(op, d.s.b.nc.Publish(d.nm.Reply, ackAck))
	}
	if !time.Now().Before(d.deadline) {
		return d.expired(op)
	}
	actx, cancel := context.WithDeadline(ctx, d.deadline)
	defer cancel()
	err := d.jm.DoubleAck(actx)
	if err == nil && time.Now().Before(d.deadline) {
		return nil
	}
	if ctx.Err() != nil {
		return driver.Canceled(op, ctx.Err())
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return d.expired(op)
	}
	return wrap(op, err)
}

func (d *delivery) expired(op string) error {
	return driver.Errorf(semantics.Transient, op,
		"message %s: the server did not confirm the ack within the ack wait (%v) of the pull that delivered it, so it may redeliver the message: not acked, do not handle it (at-most-once)", d.m.ID, d.s.ackWait)
}

// Nack asks for redelivery after delay (NakWithDelay), or dead-letters the
// message when this was attempt MaxAttempts.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	const op = "nats: nack"
	if max := d.s.opts.MaxAttempts; max > 0 && d.m.Attempt >= max {
		return d.deadLetter(ctx, "nacked on attempt "+strconv.Itoa(d.m.Attempt)+" (MaxAttempts "+strconv.Itoa(max)+")")
	}
	if d.s.amo {
		// Only a nak the server confirms before it could redeliver the
		// message is safe: a later one would make it deliver a copy.
		if !time.Now().Before(d.deadline) {
			return nil // it comes back after the ack wait anyway
		}
		actx, cancel := context.WithDeadline(ctx, d.deadline)
		defer cancel()
		_, err := d.s.b.nc.RequestWithContext(actx, d.jm.Reply(), nakBody(delay))
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return wrap(op, err)
		}
		return nil
	}
	return wrap(op, d.s.b.nc.Publish(d.nm.Reply, nakBody(delay)))
}

func nakBody(delay time.Duration) []byte {
	if delay <= 0 {
		return ackNak
	}
	return []byte(`-NAK {"delay": ` + strconv.FormatInt(delay.Nanoseconds(), 10) + `}`)
}

// deadLetter publishes the message to the dead-letter topic (waiting for
// JetStream's ack) and then terminates it on its own stream, so that it is
// never redelivered there.
func (d *delivery) deadLetter(ctx context.Context, reason string) error {
	const op = "nats: dead-letter"
	dm := d.m.Clone()
	dm.SetHeader(driver.HeaderDeadReason, reason)
	dm.SetHeader(driver.HeaderDeadAttempts, strconv.Itoa(d.m.Attempt))
	dm.SetHeader(driver.HeaderOriginalTopic, d.s.opts.Topic)
	msg, _ := encode(d.s.opts.DeadLetterTopic, dm)
	if _, err := d.s.b.js.PublishMsg(ctx, msg); err != nil {
		if isNoStream(err) {
			return noStream(op, d.s.opts.DeadLetterTopic, err)
		}
		return wrap(op, err)
	}
	if d.jm != nil {
		return wrap(op, d.jm.Term())
	}
	return wrap(op, d.s.b.nc.Publish(d.nm.Reply, ackTerm))
}
