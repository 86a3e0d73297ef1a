package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Publisher sends messages to any topic of its broker. It is safe for
// concurrent use; a nil *Publisher returns ErrClosed.
type Publisher struct {
	b       *Broker
	drv     driver.Publisher
	maxSize int
	groups  driver.GroupChecker // nil where the driver refuses by itself
	known   sync.Map            // topics seen to have a group (string -> *string, itself)
	// lastKnown is the topic of known that Publish found last: a service
	// publishing to one topic checks it with a string comparison.
	lastKnown atomic.Pointer[string]

	closed atomic.Bool // set first by Close: new Publish calls fail at once
	once   sync.Once
	err    error // of the driver's Close
}

// Publish sends msgs to topic and returns nil only once the broker has
// durably accepted every one of them (Kafka acks=all, RabbitMQ publisher
// confirms, SQS per-entry success, Pub/Sub publish results). When some fail
// the error is a *PublishError naming them (errors.As); the others were
// accepted. That holds when ctx ends during the call too: the error is then
// of kind Canceled, matches ctx.Err() with errors.Is, and still names the
// messages not known to be accepted.
//
// Before any I/O, Publish gives each message without an ID a random UUID and
// stamps PublishedAt (on the caller's Message), and refuses the whole call
// with an InvalidArgument error when a message is nil, over the adapter's
// size limit (errors.Is(err, ErrTooLarge)), or carries a reserved header.
// Publishing to a topic on which no group was declared fails with an error
// matching ErrNoGroup on every broker.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*Message) error {
	const op = "queuekit: publish"
	if p == nil || p.closed.Load() {
		return ErrClosed
	}
	if ctx == nil {
		return Errorf(semantics.InvalidArgument, op, "nil context")
	}
	if err := checkName(op, "topic", topic); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := prepare(op, msgs, p.maxSize, p.b.caps); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return driver.Canceled(op, err)
	}
	if p.groups != nil {
		if err := p.checkGroup(ctx, op, topic); err != nil {
			return err
		}
	}
	if err := p.drv.Publish(ctx, topic, msgs...); err != nil {
		return publishError(ctx, op, err)
	}
	return nil
}

// publishError is opError for Publish: an error naming the messages that
// failed (a *PublishError, bare or wrapped by the adapter) keeps them, also
// when ctx ended, so that the caller can tell what was accepted and retry
// only the rest. When ctx ended, the error is of kind Canceled and matches
// ctx.Err() with errors.Is, as every other ctx-end error.
func publishError(ctx context.Context, op string, err error) error {
	var pe *PublishError
	if !errors.As(err, &pe) {
		return opError(ctx, op, err)
	}
	if cerr := ctx.Err(); cerr != nil && driver.KindOf(err) != semantics.Canceled {
		return &Error{Kind: semantics.Canceled, Op: op, Err: fmt.Errorf("%w (%w)", err, cerr)}
	}
	return err
}

// checkGroup refuses topic with ErrNoGroup while the driver says it has no
// group. Once it has one, the answer is kept for the publisher's life (a
// group, once declared, receives every later message).
func (p *Publisher) checkGroup(ctx context.Context, op, topic string) error {
	if last := p.lastKnown.Load(); last != nil && *last == topic {
		return nil
	}
	if v, ok := p.known.Load(topic); ok {
		p.lastKnown.Store(v.(*string))
		return nil
	}
	ok, err := p.groups.HasGroup(ctx, topic)
	if err != nil {
		return opError(ctx, op, err)
	}
	if !ok {
		return &Error{Kind: semantics.NotFound, Op: op, Err: fmt.Errorf("topic %q: %w", topic, ErrNoGroup)}
	}
	p.remember(topic)
	return nil
}

// remember adds topic to known. (A function of its own: the topic it takes
// the address of escapes only here, not on checkGroup's fast path.)
func (p *Publisher) remember(topic string) {
	v, _ := p.known.LoadOrStore(topic, &topic)
	p.lastKnown.Store(v.(*string))
}

// As sets target to the adapter's publisher or an SDK value it exposes.
func (p *Publisher) As(target any) bool {
	if p == nil {
		return false
	}
	return as(p.drv, target)
}

// Close makes later Publish calls return ErrClosed, then flushes what the
// adapter buffers and releases the publisher, waiting no longer than ctx:
// Publish calls still under way finish (their messages confirmed) or fail
// (reported as not published), as the adapter's Close decides. Closing
// twice returns the first Close's error.
func (p *Publisher) Close(ctx context.Context) error {
	if p == nil {
		return nil
	}
	err := p.close(ctx)
	p.b.forgetPublisher(p)
	return err
}

func (p *Publisher) close(ctx context.Context) error {
	p.once.Do(func() {
		p.closed.Store(true)
		p.err = opError(ctx, "queuekit: close publisher", p.drv.Close(ctx))
	})
	return p.err
}

// prepare readies msgs for publishing (see Publish). It also checks each
// message's DeliverAt against caps: a time in the future needs
// caps.ScheduledDelivery (else Unsupported, naming the outbox, which
// schedules on any broker) and may be at most caps.MaxDelay ahead when that
// is set (else InvalidArgument). A DeliverAt not in the future means at
// once and is left to the adapter as is.
func prepare(op string, msgs []*Message, maxSize int, caps semantics.Capabilities) error {
	var now time.Time
	for i, m := range msgs {
		if m == nil {
			return Errorf(semantics.InvalidArgument, op, "message %d is nil", i)
		}
		if m.ID == "" {
			m.ID = NewID()
		}
		if len(m.Headers) > 0 {
			for _, h := range reserved {
				if _, bad := m.Headers[h]; bad {
					return Errorf(semantics.InvalidArgument, op, "message %s: header %q is reserved (it carries the message's identity on every broker)", m.ID, h)
				}
			}
		}
		if maxSize > 0 {
			if n := m.Size(); n > maxSize {
				return &Error{Kind: semantics.InvalidArgument, Op: op, Err: &TooLargeError{ID: m.ID, Size: n, Max: maxSize}}
			}
		}
		if !m.DeliverAt.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			if err := checkDeliverAt(op, m, m.DeliverAt.Sub(now), caps); err != nil {
				return err
			}
		}
		if m.PublishedAt.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			m.PublishedAt = now
		}
	}
	return nil
}

// checkDeliverAt refuses a message scheduled delay ahead where caps cannot
// honour it (see prepare).
func checkDeliverAt(op string, m *Message, delay time.Duration, caps semantics.Capabilities) error {
	switch {
	case delay <= 0:
		return nil
	case !caps.ScheduledDelivery:
		return Errorf(semantics.Unsupported, op,
			"message %s: DeliverAt is %v ahead, and this adapter does not deliver on schedule (it does not claim ScheduledDelivery); schedule it through the transactional outbox (outbox.Outbox.AddAt, or Add with DeliverAt set), whose relay holds it until then on any broker",
			m.ID, delay.Round(time.Millisecond))
	case caps.MaxDelay > 0 && delay > caps.MaxDelay:
		return Errorf(semantics.InvalidArgument, op,
			"message %s: DeliverAt is %v ahead, over this adapter's longest delay of %v (Capabilities.MaxDelay); schedule it through the transactional outbox (outbox.Outbox.AddAt), which has no limit",
			m.ID, delay.Round(time.Millisecond), caps.MaxDelay)
	}
	return nil
}

var reserved = [...]string{HeaderID, HeaderAttempt, HeaderPublishedAt}
