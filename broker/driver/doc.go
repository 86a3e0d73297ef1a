// Package driver is what a queuekit adapter implements, and the helpers
// adapters use. Applications never import it: they hold the concrete types of
// package broker, which wrap a driver and do once, for every adapter, what the
// contract below asks of all of them.
//
// The relation is that of database/sql/driver to database/sql, and of
// gocloud.dev/pubsub/driver to gocloud.dev/pubsub.
//
// # What package broker does for every adapter
//
//   - nil, typed-nil and closed checks: a driver's Publish, Receive, Ack and
//     Nack are never called after the Close of what made them;
//   - message preparation before any I/O: IDs (NewID), PublishedAt, the size
//     limit of Capabilities.MaxMessageSize, and refusal of reserved headers
//     (HeaderID, HeaderAttempt, HeaderPublishedAt) in user headers;
//   - option validation and defaults (group "default", dead-letter topic
//     "<topic>.dlq", at-least-once): NewSubscriber receives complete options;
//   - idempotent settling: Ack and Nack of a Delivery are called at most
//     once, and never both;
//   - errors when the caller's context ends: one kind (semantics.Canceled)
//     whatever the adapter returned;
//   - Close order: subscribers, then publishers (which flush), then the
//     driver's Broker.
//
// # What an adapter does
//
//   - Broker.NewSubscriber configures the broker for the guarantee and
//     ordering in SubscriberOptions — or refuses with a semantics.Unsupported
//     error that names the setting that would honour it. It never runs
//     weaker than asked. Under AtMostOnce, Delivery.Ack returns only once the
//     broker recorded the ack (a crash after Ack never redelivers). Under
//     AtLeastOnce an adapter may batch acks (Kafka's commits, RabbitMQ's
//     multiple acks, SQS's DeleteMessageBatch, Redis's pipelined XACK):
//     Ack may return before the broker recorded it, so a crash right after
//     may redeliver — which at-least-once allows — but Close sends what
//     is held before it returns.
//   - Publisher.Publish returns nil only once the broker durably accepted
//     every message; a partial failure is a *PublishError naming which.
//     Publishing to a topic on which no group was declared fails with an
//     error matching ErrNoGroup (or the adapter implements GroupChecker and
//     package broker checks).
//   - Names (topics, groups) are checked against the broker's rules before
//     any I/O, as semantics.InvalidArgument errors.
//   - Headers are carried losslessly; an adapter never lets a header named
//     like a reserved one override a delivery's ID or Attempt.
//   - Errors carry a semantics.Kind (Errorf, WrapError); adapters never
//     retry in a hidden loop.
//
// Optional interfaces, found by type assertion: BatchReceiver (Subscriber),
// Declarer, GroupChecker, BacklogReporter and As (Broker).
//
// An adapter registers an Opener for its URL scheme with Register, reads its
// URL parameters with NewParams, and proves itself with package conformance.
package driver
