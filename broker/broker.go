package broker

import (
	"context"
	"time"

	"github.com/queuekit/queuekit/semantics"
)

// Broker is a connection to one message broker, opened by Open from a URL or
// by an adapter's typed constructor. It makes publishers and subscribers and
// says what it guarantees. It is safe for concurrent use.
type Broker interface {
	// NewPublisher returns a publisher that can send to any topic.
	NewPublisher(ctx context.Context) (Publisher, error)
	// NewSubscriber subscribes to opts.Topic in group opts.Group,
	// creating what the broker needs (queue, subscription, consumer group).
	NewSubscriber(ctx context.Context, opts SubscriberOptions) (Subscriber, error)
	// Capabilities says what this adapter guarantees natively.
	Capabilities() semantics.Capabilities
	// Close releases the connection. Publishers and subscribers made by
	// the broker should be closed first.
	Close(ctx context.Context) error
}

// Publisher sends messages. It is safe for concurrent use.
type Publisher interface {
	// Publish sends msgs to topic and returns nil only once the broker has
	// durably accepted every one of them. When some fail, the error is a
	// *PublishError naming them; the others were accepted. A message over
	// the adapter's size limit fails the call before any I/O
	// (errors.Is(err, ErrTooLarge)). Publish sets an empty Message.ID to a
	// random UUID and stamps PublishedAt.
	Publish(ctx context.Context, topic string, msgs ...*Message) error
	// Close flushes what is buffered, waiting no longer than ctx, and
	// releases the publisher. Publish after Close returns ErrClosed.
	Close(ctx context.Context) error
}

// Subscriber hands out deliveries from one subscription. Most code does not
// call it directly but runs Consume.
type Subscriber interface {
	// Receive blocks until a delivery is available, ctx is done, or the
	// subscriber is closed (ErrClosed).
	Receive(ctx context.Context) (Delivery, error)
	// Close stops taking messages. Deliveries not yet settled are not
	// acknowledged: the broker redelivers them.
	Close(ctx context.Context) error
}

// BatchReceiver is an optional Subscriber interface for adapters that can
// hand out several deliveries per call. Consume uses it when present.
type BatchReceiver interface {
	// ReceiveBatch blocks like Receive until at least one delivery is
	// available, then fills buf with up to len(buf) deliveries without
	// blocking further and returns how many.
	ReceiveBatch(ctx context.Context, buf []Delivery) (int, error)
}

// Delivery is one delivery of a message, to be settled once with Ack or
// Nack. Settling is idempotent: a second Ack (or Nack) returns nil and does
// nothing; Nack after Ack (or Ack after Nack) returns ErrAlreadySettled.
// Neither ever panics.
type Delivery interface {
	// Message is the delivered message. It must not be modified after
	// settling.
	Message() *Message
	// Ack removes the message from the subscription.
	Ack(ctx context.Context) error
	// Nack asks for redelivery no sooner than delay.
	Nack(ctx context.Context, delay time.Duration) error
}

// SubscriberOptions say what to subscribe to and how. Only Topic is
// required.
type SubscriberOptions struct {
	// Topic to consume.
	Topic string
	// Group names the subscription: subscribers of one group compete for
	// messages, and each group receives every message. Default "default".
	Group string
	// Ordering asks the adapter to keep per-key order where it needs
	// configuring for that (RabbitMQ single active consumer, Pub/Sub
	// message ordering, SQS FIFO).
	Ordering semantics.Ordering
	// MaxAttempts, when > 0 and the adapter claims DeadLetter, moves a
	// message delivered that many times without an Ack to DeadLetterTopic.
	MaxAttempts int
	// DeadLetterTopic receives dead letters; default Topic + ".dlq".
	DeadLetterTopic string
	// AckTimeout is how long a delivery may stay unsettled before the
	// broker redelivers it (the visibility timeout or ack deadline); 0
	// means the adapter's default.
	AckTimeout time.Duration
	// Prefetch bounds the deliveries held unsettled by this subscriber; 0
	// means the adapter's default. It is the consumer's backpressure.
	Prefetch int
}

// WithDefaults returns o with Group and DeadLetterTopic filled in.
func (o SubscriberOptions) WithDefaults() SubscriberOptions {
	if o.Group == "" {
		o.Group = "default"
	}
	if o.DeadLetterTopic == "" && o.Topic != "" {
		o.DeadLetterTopic = o.Topic + ".dlq"
	}
	return o
}

// Validate returns an InvalidArgument error when a required option is
// missing or a value is out of range.
func (o SubscriberOptions) Validate(op string) error {
	switch {
	case o.Topic == "":
		return Errorf(semantics.InvalidArgument, op, "SubscriberOptions.Topic is required")
	case o.MaxAttempts < 0:
		return Errorf(semantics.InvalidArgument, op, "SubscriberOptions.MaxAttempts is %d, must be >= 0", o.MaxAttempts)
	case o.AckTimeout < 0:
		return Errorf(semantics.InvalidArgument, op, "SubscriberOptions.AckTimeout is %v, must be >= 0", o.AckTimeout)
	case o.Prefetch < 0:
		return Errorf(semantics.InvalidArgument, op, "SubscriberOptions.Prefetch is %d, must be >= 0", o.Prefetch)
	}
	return nil
}
