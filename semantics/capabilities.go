package semantics

import "time"

// Capabilities is what an adapter guarantees natively. The conformance suite
// runs a property only when the adapter claims what it needs and reports it
// as unsupported otherwise, so a claim here is a promise that is tested.
type Capabilities struct {
	// ConsumerGroups: subscribers that share a group compete for messages,
	// each message going to one of them.
	ConsumerGroups bool
	// FanOut: every group subscribed to a topic gets every message.
	FanOut bool
	// PerKeyOrdering: messages with the same key are delivered in publish
	// order (to one group, absent failures).
	PerKeyOrdering bool
	// CrashRedelivery: a delivery that is never settled (its consumer died)
	// is delivered again, after the ack timeout or on disconnect.
	CrashRedelivery bool
	// DelayedNack: Nack(delay) holds the message back for at least delay.
	DelayedNack bool
	// AttemptCount: Message.Attempt counts deliveries, starting at 1.
	AttemptCount bool
	// DeadLetter: the adapter honours SubscriberOptions.MaxAttempts and
	// moves a message that failed that many times to the dead-letter topic.
	DeadLetter bool
	// NativeDeadLetter: DeadLetter is done by the broker itself (SQS
	// RedrivePolicy, RabbitMQ DLX, Pub/Sub DeadLetterPolicy).
	NativeDeadLetter bool
	// MaxMessageSize is the largest payload plus headers the adapter
	// accepts, in bytes; 0 means no limit of its own.
	MaxMessageSize int
	// ScheduledDelivery: a message published with Message.DeliverAt in the
	// future is not delivered before that time (natively: SQS DelaySeconds,
	// RabbitMQ delay queues), and is delivered soon after it, within a
	// tolerance the adapter documents. Without it, package broker refuses
	// such a message (Unsupported) and the transactional outbox (AddAt)
	// schedules it instead, on any broker.
	ScheduledDelivery bool
	// MaxDelay is the furthest ahead a message may be scheduled, where the
	// broker caps it (SQS: 15 minutes); 0 means no cap. Package broker
	// refuses a DeliverAt further ahead (InvalidArgument).
	MaxDelay time.Duration
}
