package broker

import (
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Message is what is published and what a handler receives.
//
// ID, Key, Payload and Headers are set by the producer. Publish fills in an
// empty ID with a random UUID and sets PublishedAt, on the caller's Message.
// Topic, Attempt and PublishedAt are set on delivery.
type Message = driver.Message

// SubscriberOptions say what to subscribe to and how; only Topic is
// required. The delivery guarantee and per-key ordering are declared here,
// once: the adapter configures the broker for them or NewSubscriber refuses
// with an Unsupported error naming the setting that would (it never runs
// weaker than asked), and Consume enforces them.
type SubscriberOptions = driver.SubscriberOptions

// Backlog is what a consumer group has yet to finish on a topic (see
// Broker.Backlog). Counts the broker cannot tell are -1.
type Backlog = driver.Backlog

// BacklogPart is the backlog of one partition.
type BacklogPart = driver.BacklogPart

// Error is the error type of queuekit and its adapters: what was being done
// (Op), the Kind of failure and the cause.
type Error = driver.Error

// TooLargeError is returned, before any I/O, for a message over the
// adapter's size limit (errors.Is(err, ErrTooLarge)).
type TooLargeError = driver.TooLargeError

// PublishError reports which messages of a batch failed; the others were
// durably accepted.
type PublishError = driver.PublishError

// PublishFailure is one failed message of a batch.
type PublishFailure = driver.PublishFailure

// Reserved header names (see the driver package). Publish refuses user
// headers named HeaderID, HeaderAttempt or HeaderPublishedAt; the others
// are written by the dead-letter middleware and redrive.
const (
	HeaderPrefix        = driver.HeaderPrefix
	HeaderID            = driver.HeaderID
	HeaderPublishedAt   = driver.HeaderPublishedAt
	HeaderAttempt       = driver.HeaderAttempt
	HeaderOriginalTopic = driver.HeaderOriginalTopic
	HeaderDeadReason    = driver.HeaderDeadReason
	HeaderDeadAttempts  = driver.HeaderDeadAttempts
	HeaderFirstFailure  = driver.HeaderFirstFailure
	HeaderLastFailure   = driver.HeaderLastFailure
)

var (
	// ErrClosed is returned by every operation on a closed (or nil)
	// publisher, subscriber or broker.
	ErrClosed = driver.ErrClosed
	// ErrAlreadySettled is returned by Nack after Ack, or Ack after Nack.
	// Settling twice the same way returns nil.
	ErrAlreadySettled = driver.ErrAlreadySettled
	// ErrTooLarge matches (errors.Is) every *TooLargeError.
	ErrTooLarge = driver.ErrTooLarge
	// ErrNoGroup is matched (errors.Is) by the error of a Publish to a
	// topic on which no group was declared, on every broker: declare the
	// groups first (Broker.Declare) or create a subscriber.
	ErrNoGroup = driver.ErrNoGroup
)

// NewID returns a random (version 4) UUID string.
func NewID() string { return driver.NewID() }

// DeadLetterSuffix is appended to a topic's name to make its default
// dead-letter topic: one definition for every adapter and the dlq
// middleware.
const DeadLetterSuffix = driver.DeadLetterSuffix

// DeadLetterTopic returns topic's default dead-letter topic, topic+".dlq".
func DeadLetterTopic(topic string) string { return driver.DeadLetterTopic(topic) }

// Errorf returns an *Error of kind for op with a formatted cause; %w works.
func Errorf(kind semantics.Kind, op, format string, args ...any) error {
	return driver.Errorf(kind, op, format, args...)
}

// WrapError returns err as an *Error of kind for op, or nil if err is nil.
// An err that already has a kind keeps it.
func WrapError(kind semantics.Kind, op string, err error) error {
	return driver.WrapError(kind, op, err)
}

// KindOf returns the kind of the first error in err's chain that has one, or
// semantics.Unknown.
func KindOf(err error) semantics.Kind { return driver.KindOf(err) }
