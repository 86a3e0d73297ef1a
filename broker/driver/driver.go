package driver

import (
	"context"
	"time"

	"github.com/queuekit/queuekit/semantics"
)

// Broker is a connection to one broker. Package broker calls it only with
// validated arguments, and never after Close.
type Broker interface {
	// NewPublisher returns a publisher that can send to any topic.
	NewPublisher(ctx context.Context) (Publisher, error)
	// NewSubscriber subscribes to opts.Topic in group opts.Group, creating
	// what the broker needs, configured for opts.Guarantee and
	// opts.Ordering (or a semantics.Unsupported error naming the setting
	// that would honour them). opts is complete (see SubscriberOptions).
	NewSubscriber(ctx context.Context, opts SubscriberOptions) (Subscriber, error)
	// Capabilities says what the adapter guarantees natively.
	Capabilities() semantics.Capabilities
	// Close releases the connection. Package broker closes the publishers
	// and subscribers it made first.
	Close(ctx context.Context) error
}

// Publisher sends messages.
type Publisher interface {
	// Publish sends msgs to topic and returns nil only once the broker has
	// durably accepted every one of them; a partial failure is a
	// *PublishError. msgs are prepared (IDs, PublishedAt, size checked).
	Publish(ctx context.Context, topic string, msgs ...*Message) error
	// Close flushes what is buffered, waiting no longer than ctx. No
	// Publish starts after it is called; one still running (waiting for
	// room or a confirm) finishes or fails, as the adapter documents.
	Close(ctx context.Context) error
}

// Subscriber hands out deliveries from one subscription.
type Subscriber interface {
	// Receive blocks until a delivery is available, ctx ends, or the
	// subscriber is closed (ErrClosed).
	Receive(ctx context.Context) (Delivery, error)
	// Close stops taking messages; unsettled deliveries come back.
	Close(ctx context.Context) error
}

// BatchReceiver is an optional Subscriber interface for adapters that can
// hand out several deliveries per call (see FillBatch).
type BatchReceiver interface {
	// ReceiveBatch blocks like Receive until at least one delivery is
	// available, then fills buf without blocking further; it returns how
	// many it filled.
	ReceiveBatch(ctx context.Context, buf []Delivery) (int, error)
}

// Delivery is one delivery of a message. Package broker calls Ack or Nack
// at most once per delivery, never both.
type Delivery interface {
	Message() *Message
	Ack(ctx context.Context) error
	// Nack asks for redelivery no sooner than delay.
	Nack(ctx context.Context, delay time.Duration) error
}

// Declarer is an optional Broker interface: Declare creates topic and the
// named groups with the broker's own provisioning, so that every message
// published afterwards reaches each group. It is idempotent.
type Declarer interface {
	Declare(ctx context.Context, topic string, groups []string) error
}

// GroupChecker is an optional Broker interface for adapters whose broker
// would silently accept a message that no group receives: package broker
// asks it once per topic and publisher, and refuses Publish with ErrNoGroup
// while it answers false.
type GroupChecker interface {
	HasGroup(ctx context.Context, topic string) (bool, error)
}

// As is an optional interface of Broker, Publisher and Subscriber: it sets
// target to an underlying SDK value (such as *kgo.Client) and reports
// whether it could.
type As interface {
	As(target any) bool
}

// SubscriberOptions say what to subscribe to and how. Package broker
// validates them and fills in the defaults before a driver sees them:
// Topic and Group are set, DeadLetterTopic is set, and Guarantee is
// AtLeastOnce or AtMostOnce (EffectivelyOnce reaches drivers as
// AtLeastOnce: the idempotency record is package broker's business).
type SubscriberOptions struct {
	// Topic to consume. Required.
	Topic string
	// Group names the subscription: subscribers of one group compete for
	// messages, and each group receives every message. Default "default".
	Group string
	// Guarantee is the delivery guarantee the subscription is consumed
	// under; default AtLeastOnce. Under AtMostOnce a Delivery's Ack must be
	// recorded by the broker before it returns, and consumers ack before
	// handling.
	Guarantee semantics.Guarantee
	// Ordering asks for per-key order: the adapter configures the broker
	// for it (Kafka partitions, RabbitMQ single active consumer, SQS FIFO,
	// Pub/Sub ordering keys) and Consume dispatches per key.
	Ordering semantics.Ordering
	// MaxAttempts, when > 0 and the adapter claims DeadLetter, moves a
	// message delivered that many times without an Ack to DeadLetterTopic.
	MaxAttempts int
	// DeadLetterTopic receives dead letters; default DeadLetterTopic(Topic).
	DeadLetterTopic string
	// AckTimeout is how long a delivery may stay unsettled before the
	// broker redelivers it (visibility timeout, ack deadline); 0 means the
	// adapter's default.
	AckTimeout time.Duration
	// Prefetch bounds the deliveries held unsettled by this subscriber; 0
	// means the adapter's default.
	Prefetch int
}

// DeadLetterSuffix is appended to a topic's name to make its default
// dead-letter topic.
const DeadLetterSuffix = ".dlq"

// DeadLetterTopic returns topic's default dead-letter topic, topic+".dlq".
func DeadLetterTopic(topic string) string { return topic + DeadLetterSuffix }
