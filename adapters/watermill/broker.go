package watermill

import (
	"context"
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// DefaultPrefetch is how many Subscribe calls a queuekit subscriber makes on
// a Competing backend when SubscriberOptions.Prefetch is 0.
const DefaultPrefetch = 8

// Options configure a Broker that wraps Watermill pub/subs. Publisher and
// one of Subscriber or NewSubscriber are required.
type Options struct {
	// Name names the backend in errors, such as "gochannel"; default
	// "watermill".
	Name string

	// Publisher sends what every publisher of the Broker publishes. The
	// Broker owns it: Close closes it.
	Publisher message.Publisher

	// Subscriber is one Watermill subscriber shared by every subscription
	// (GoChannel: each Subscribe call gets every message). A queuekit
	// subscriber ends its subscriptions by cancelling their Subscribe
	// context. The Broker owns it: Close closes it.
	Subscriber message.Subscriber

	// NewSubscriber returns a Watermill subscriber for one queuekit
	// subscription (opts has Group and DeadLetterTopic filled in), for
	// backends whose consumer group is part of the subscriber's config (a
	// watermill-amqp queue name, a watermill-kafka ConsumerGroup). The
	// queuekit subscriber closes it when it closes. It is used when
	// Subscriber is nil.
	NewSubscriber func(ctx context.Context, opts broker.SubscriberOptions) (message.Subscriber, error)

	// Competing says that several Subscribe calls to one topic on a
	// subscriber from NewSubscriber compete for its messages (a
	// watermill-amqp queue, a watermill-kafka consumer group). Watermill
	// subscribers hand out the next message of a subscription only after
	// the previous one was settled, so a queuekit subscriber then makes
	// SubscriberOptions.Prefetch Subscribe calls (default DefaultPrefetch)
	// to hold that many deliveries at once. Leave it false where each
	// Subscribe call gets every message (GoChannel): one call is made.
	Competing bool

	// Capabilities are the backend's own guarantees: claim ConsumerGroups,
	// FanOut, PerKeyOrdering and CrashRedelivery only for what the backend
	// does (conformance.Check measures it). The bridge sets the rest:
	// DelayedNack is always claimed (it holds a nacked message back for
	// the delay before the Watermill Nack, see the package doc),
	// MaxMessageSize is Options.MaxMessageSize, and AttemptCount and
	// DeadLetter are never claimed: Watermill counts no deliveries.
	Capabilities semantics.Capabilities

	// MaxMessageSize, when > 0, is the largest message (by
	// broker.Message.Size) Publish accepts; larger ones fail before any
	// I/O with broker.ErrTooLarge.
	MaxMessageSize int

	// CopyPayload makes Publish copy each payload before handing it to
	// Watermill, for in-process backends (GoChannel) that pass the slice
	// itself to subscribers, so that the caller may reuse it.
	CopyPayload bool

	// OnClose, if set, runs last in Broker.Close, to release what the
	// pub/subs share (a watermill-amqp connection).
	OnClose func() error
}

// Broker is a queuekit broker.Broker over Watermill pub/subs. It is safe for
// concurrent use.
type Broker struct {
	opts Options
	caps semantics.Capabilities

	mu     sync.Mutex
	closed bool
	subs   map[*subscriber]struct{}
}

// New returns a Broker over the Watermill pub/subs in opts.
func New(opts Options) (*Broker, error) {
	if opts.Name == "" {
		opts.Name = "watermill"
	}
	op := opts.Name + ": new"
	switch {
	case opts.Publisher == nil:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "Options.Publisher is required")
	case opts.Subscriber == nil && opts.NewSubscriber == nil:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "Options.Subscriber or Options.NewSubscriber is required")
	case opts.MaxMessageSize < 0:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "Options.MaxMessageSize is %d, must be >= 0", opts.MaxMessageSize)
	}
	caps := opts.Capabilities
	caps.DelayedNack = true
	caps.AttemptCount, caps.DeadLetter, caps.NativeDeadLetter = false, false, false
	caps.MaxMessageSize = opts.MaxMessageSize
	return &Broker{opts: opts, caps: caps, subs: map[*subscriber]struct{}{}}, nil
}

// Capabilities reports the backend's claims from Options.Capabilities plus
// what the bridge provides (see Options.Capabilities).
func (b *Broker) Capabilities() semantics.Capabilities { return b.caps }

// Publisher returns the Watermill publisher the Broker publishes with.
func (b *Broker) Publisher() message.Publisher { return b.opts.Publisher }

// NewPublisher returns a publisher over the Broker's Watermill publisher.
func (b *Broker) NewPublisher(ctx context.Context) (broker.Publisher, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, broker.ErrClosed
	}
	return &publisher{b: b, op: b.opts.Name + ": publish"}, nil
}

// Close closes the subscribers still open, then the Watermill publisher and
// shared subscriber, then runs Options.OnClose, waiting no longer than ctx.
func (b *Broker) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]*subscriber, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	var errs []error
	for _, s := range subs {
		if err := s.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, within(ctx, b.opts.Name+": close", func() error {
		var errs []error
		errs = append(errs, b.opts.Publisher.Close())
		if b.opts.Subscriber != nil && any(b.opts.Subscriber) != any(b.opts.Publisher) {
			errs = append(errs, b.opts.Subscriber.Close())
		}
		if b.opts.OnClose != nil {
			errs = append(errs, b.opts.OnClose())
		}
		return errors.Join(errs...)
	}))
	return errors.Join(errs...)
}

func (b *Broker) forget(s *subscriber) {
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
}

// within runs fn, which cannot be cancelled, and returns its error, or a
// Transient error when ctx ends first (fn then finishes in the background).
func within(ctx context.Context, op string, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return broker.WrapError(semantics.Unknown, op, err)
	case <-ctx.Done():
		return broker.Errorf(semantics.Transient, op, "gave up waiting: %w", ctx.Err())
	}
}

// publisher is a queuekit Publisher over the Broker's Watermill publisher.
type publisher struct {
	b  *Broker
	op string

	mu       sync.RWMutex
	closed   bool
	inflight sync.WaitGroup
}

// Publish hands the messages to the Watermill publisher one at a time, in
// order, so that a failure names the message that failed; the messages
// after it are not attempted. Watermill's Publish has no context: each
// message carries ctx (message.Message.Context), and ctx is checked between
// messages.
func (p *publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return broker.ErrClosed
	}
	p.inflight.Add(1)
	p.mu.RUnlock()
	defer p.inflight.Done()
	if topic == "" {
		return broker.Errorf(semantics.InvalidArgument, p.op, "topic is required")
	}
	if err := broker.Prepare(p.op, msgs, p.b.opts.MaxMessageSize); err != nil {
		return err
	}
	for i, m := range msgs {
		if err := ctx.Err(); err != nil {
			return notPublished(msgs, i, broker.WrapError(semantics.Transient, p.op, err))
		}
		wm := ToWatermill(m)
		if p.b.opts.CopyPayload && m.Payload != nil {
			wm.Payload = append(message.Payload(nil), m.Payload...)
		}
		wm.SetContext(ctx)
		if err := p.b.opts.Publisher.Publish(topic, wm); err != nil {
			// Watermill errors carry no classification; a failed send is
			// worth retrying more often than not.
			return notPublished(msgs, i, broker.WrapError(semantics.Transient, p.op, err))
		}
	}
	return nil
}

// notPublished reports msgs[from:] as failed: msgs[from] with err, the rest
// as not attempted.
func notPublished(msgs []*broker.Message, from int, err error) error {
	pe := &broker.PublishError{}
	for i := from; i < len(msgs); i++ {
		e := err
		if i > from {
			e = &broker.Error{Kind: broker.KindOf(err), Err: errors.New("not attempted: an earlier message of the batch failed")}
		}
		pe.Failed = append(pe.Failed, broker.PublishFailure{Index: i, ID: msgs[i].ID, Err: e})
	}
	return pe
}

// Close waits (no longer than ctx) for the Publish calls in progress; later
// ones return broker.ErrClosed. Watermill publishers are synchronous or
// flush in their own Close, which Broker.Close calls.
func (p *publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	return within(ctx, p.op+": close, waiting for the publishes in progress", func() error {
		p.inflight.Wait()
		return nil
	})
}
