package watermill

import (
	"context"
	"errors"
	"reflect"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/broker/driver"
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

	// Subscriber is one Watermill subscriber shared by every group, on
	// which each Subscribe call gets every message and keeps nothing once
	// cancelled (GoChannel). The Broker calls Subscribe once per group
	// (topic and group name), when the group is declared or first
	// subscribed to, and keeps that subscription until it closes: the
	// queuekit subscribers of the group compete for its messages, and what
	// one of them gives back (Nack, or unsettled at Close) goes to the
	// others. The Broker owns it: Close closes it.
	Subscriber message.Subscriber

	// NewSubscriber returns a Watermill subscriber for one queuekit
	// subscription (opts is complete: Group and DeadLetterTopic are set),
	// for backends whose consumer group is part of the subscriber's config
	// and whose subscriptions outlive their consumers (a watermill-amqp
	// queue, a watermill-kafka ConsumerGroup). The queuekit subscriber
	// closes it when it closes. Declare also uses it, through its
	// SubscribeInitialize method (message.SubscribeInitializer). It is used
	// when Subscriber is nil.
	NewSubscriber func(ctx context.Context, opts driver.SubscriberOptions) (message.Subscriber, error)

	// Competing says that several Subscribe calls to one topic on a
	// subscriber from NewSubscriber compete for its messages (a
	// watermill-amqp queue, a watermill-kafka consumer group). Watermill
	// subscribers hand out the next message of a subscription only after
	// the previous one was settled, so a queuekit subscriber then makes
	// SubscriberOptions.Prefetch Subscribe calls (default DefaultPrefetch)
	// to hold that many deliveries at once, or one when Ordering is PerKey.
	Competing bool

	// Capabilities are the backend's own guarantees: claim ConsumerGroups,
	// FanOut, PerKeyOrdering and CrashRedelivery only for what the backend
	// does (conformance.Check measures it). The bridge sets the rest:
	// DelayedNack is always claimed (it holds a nacked message back for
	// the delay before the Watermill Nack, see the package doc),
	// MaxMessageSize is Options.MaxMessageSize, and AttemptCount and
	// DeadLetter are never claimed: Watermill counts no deliveries.
	// NewSubscriber refuses Ordering PerKey unless PerKeyOrdering is
	// claimed.
	Capabilities semantics.Capabilities

	// SyncAck says that the backend has recorded a message's Ack once
	// message.Message.Ack returns, so that nothing can deliver it again:
	// true for in-process backends such as GoChannel, whose delivery
	// goroutine waits on the ack signal itself. Only then does
	// NewSubscriber accept Guarantee AtMostOnce; otherwise it refuses it
	// (semantics.Unsupported), since an ack that a goroutine of the backend
	// forwards later (watermill-amqp) can be lost to a crash or a close and
	// the message delivered again.
	SyncAck bool

	// MaxMessageSize, when > 0, is the largest message (by
	// broker.Message.Size) Publish accepts; larger ones fail before any
	// I/O with broker.ErrTooLarge.
	MaxMessageSize int

	// CheckNames, when set, checks a topic and a group name ("" when only
	// a topic is named) against the backend's rules before any I/O; its
	// error is reported as InvalidArgument.
	CheckNames func(topic, group string) error

	// CopyPayload makes Publish copy each payload before handing it to
	// Watermill, for in-process backends (GoChannel) that pass the slice
	// itself to subscribers, so that the caller may reuse it.
	CopyPayload bool

	// As, if set, is asked first by Broker.As, for what the pub/subs share
	// (a watermill-amqp connection).
	As func(target any) bool

	// OnClose, if set, runs last in Broker.Close, to release what the
	// pub/subs share (a watermill-amqp connection).
	OnClose func() error
}

// Broker is a queuekit driver over Watermill pub/subs: wrap it with
// broker.New. It is safe for concurrent use.
type Broker struct {
	opts Options
	caps semantics.Capabilities

	mu     sync.Mutex
	closed bool
	// groups holds, per topic, the groups declared or subscribed to by
	// this Broker: with a shared Subscriber, each with its subscription;
	// with NewSubscriber, nil (the backend keeps the group).
	groups map[string]map[string]*feed
	// outside holds the topics ConsumedOutside named.
	outside map[string]bool
}

var (
	_ driver.Broker       = (*Broker)(nil)
	_ driver.Declarer     = (*Broker)(nil)
	_ driver.GroupChecker = (*Broker)(nil)
	_ driver.As           = (*Broker)(nil)
)

// New returns a Broker over the Watermill pub/subs in opts.
func New(opts Options) (*Broker, error) {
	if opts.Name == "" {
		opts.Name = "watermill"
	}
	op := opts.Name + ": new"
	switch {
	case opts.Publisher == nil:
		return nil, driver.Errorf(semantics.InvalidArgument, op, "Options.Publisher is required")
	case opts.Subscriber == nil && opts.NewSubscriber == nil:
		return nil, driver.Errorf(semantics.InvalidArgument, op, "Options.Subscriber or Options.NewSubscriber is required")
	case opts.MaxMessageSize < 0:
		return nil, driver.Errorf(semantics.InvalidArgument, op, "Options.MaxMessageSize is %d, must be >= 0", opts.MaxMessageSize)
	}
	caps := opts.Capabilities
	caps.DelayedNack = true
	caps.AttemptCount, caps.DeadLetter, caps.NativeDeadLetter = false, false, false
	// A Watermill message cannot carry DeliverAt: schedule through the outbox.
	caps.ScheduledDelivery, caps.MaxDelay = false, 0
	caps.MaxMessageSize = opts.MaxMessageSize
	return &Broker{opts: opts, caps: caps, groups: map[string]map[string]*feed{}, outside: map[string]bool{}}, nil
}

// Capabilities reports the backend's claims from Options.Capabilities plus
// what the bridge provides (see Options.Capabilities).
func (b *Broker) Capabilities() semantics.Capabilities { return b.caps }

// Publisher returns the Watermill publisher the Broker publishes with.
func (b *Broker) Publisher() message.Publisher { return b.opts.Publisher }

// NewPublisher returns a publisher over the Broker's Watermill publisher.
func (b *Broker) NewPublisher(context.Context) (driver.Publisher, error) {
	return &publisher{b: b, op: b.opts.Name + ": publish"}, nil
}

// Declare makes each group of topic exist on the backend, so that it
// receives every message published afterwards: with a shared Subscriber,
// by starting the group's Subscribe call, which the Broker keeps until it
// closes (its queuekit subscribers take over what it holds); with
// NewSubscriber, by the SubscribeInitialize of a subscriber made for the
// group (watermill-amqp declares the group's queue and binds it), or an
// Unsupported error when the backend has none. Declaring a group again
// does nothing. Either way the group is known to HasGroup.
func (b *Broker) Declare(ctx context.Context, topic string, groups []string) error {
	op := b.opts.Name + ": declare"
	for _, g := range groups {
		if err := b.checkNames(op, topic, g); err != nil {
			return err
		}
	}
	for _, g := range groups {
		if b.opts.Subscriber != nil {
			if _, err := b.sharedGroup(op, topic, g); err != nil {
				return err
			}
			continue
		}
		if b.known(topic, g) {
			continue
		}
		o := driver.SubscriberOptions{Topic: topic, Group: g, DeadLetterTopic: driver.DeadLetterTopic(topic)}
		w, err := b.opts.NewSubscriber(ctx, o)
		if err != nil {
			return driver.WrapError(semantics.Transient, op, err)
		}
		init, ok := w.(message.SubscribeInitializer)
		if !ok {
			_ = w.Close()
			return unsupported(op, "the Watermill subscriber (%T) has no SubscribeInitialize, so a group cannot be made without consuming: subscribe to declare it", w)
		}
		err = init.SubscribeInitialize(topic)
		if cerr := w.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return driver.WrapError(semantics.Transient, op, err)
		}
		if err := b.remember(topic, g, nil); err != nil {
			return err
		}
	}
	return nil
}

// HasGroup reports whether a group of topic was declared or subscribed to
// through this Broker, or topic was named by ConsumedOutside. Watermill has
// no API to ask the backend, so a group made elsewhere (a watermill-amqp
// queue bound by another service, a Router's handler on the same GoChannel)
// is not seen: declare it here too (idempotent), or name its topic with
// ConsumedOutside.
func (b *Broker) HasGroup(_ context.Context, topic string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.groups[topic]) > 0 || b.outside[topic], nil
}

// ConsumedOutside says that Watermill code the Broker does not see (a
// Router's handler on the same GoChannel, another service's queue on the
// same RabbitMQ exchange) consumes topics, so that Publish to them is not
// refused with broker.ErrNoGroup for want of a group declared through the
// Broker. Whether such a consumer really exists is then the caller's word:
// a GoChannel drops what it publishes to a topic nobody subscribes to.
func (b *Broker) ConsumedOutside(topics ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range topics {
		b.outside[t] = true
	}
}

// As sets target to the value Options.As gives, or to the Watermill
// publisher or shared subscriber when target points to a variable of their
// type (such as *gochannel.GoChannel or message.Publisher).
func (b *Broker) As(target any) bool {
	if b.opts.As != nil && b.opts.As(target) {
		return true
	}
	tv := reflect.ValueOf(target)
	if target == nil || tv.Kind() != reflect.Pointer || tv.IsNil() {
		return false
	}
	for _, v := range []any{b.opts.Publisher, b.opts.Subscriber} {
		if v != nil && reflect.TypeOf(v).AssignableTo(tv.Elem().Type()) {
			tv.Elem().Set(reflect.ValueOf(v))
			return true
		}
	}
	return false
}

// Close ends the groups' shared subscriptions (a message one of them holds
// is nacked), then closes the Watermill publisher and shared subscriber and
// runs Options.OnClose, waiting no longer than ctx. Package broker has
// closed the subscribers and publishers first.
func (b *Broker) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	var feeds []*feed
	for _, gs := range b.groups {
		for _, f := range gs {
			if f != nil {
				feeds = append(feeds, f)
			}
		}
	}
	b.mu.Unlock()
	var errs []error
	for _, f := range feeds {
		errs = append(errs, f.stop(ctx, b.opts.Name+": close, ending the groups' subscriptions"))
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

// sharedGroup returns the subscription of group on topic on the shared
// Subscriber, starting it the first time.
func (b *Broker) sharedGroup(op, topic, group string) (*feed, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, driver.ErrClosed
	}
	if f := b.groups[topic][group]; f != nil {
		return f, nil
	}
	// Subscribe under the lock: two first subscribers of a group must not
	// both subscribe (GoChannel's Subscribe returns at once).
	f, err := subscribeFeed(b.opts.Subscriber, topic, 1)
	if err != nil {
		return nil, driver.WrapError(semantics.Transient, op, err)
	}
	b.rememberLocked(topic, group, f)
	return f, nil
}

func (b *Broker) known(topic, group string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.groups[topic][group]
	return ok
}

func (b *Broker) remember(topic, group string, f *feed) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return driver.ErrClosed
	}
	b.rememberLocked(topic, group, f)
	return nil
}

func (b *Broker) rememberLocked(topic, group string, f *feed) {
	gs := b.groups[topic]
	if gs == nil {
		gs = map[string]*feed{}
		b.groups[topic] = gs
	}
	gs[group] = f
}

func (b *Broker) checkNames(op, topic, group string) error {
	if b.opts.CheckNames == nil {
		return nil
	}
	if err := b.opts.CheckNames(topic, group); err != nil {
		return driver.WrapError(semantics.InvalidArgument, op, err)
	}
	return nil
}
