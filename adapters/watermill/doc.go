// Package watermill bridges queuekit and Watermill
// (github.com/ThreeDotsLabs/watermill) both ways.
//
// # Watermill pub/subs as a queuekit broker
//
// New wraps any Watermill message.Publisher and message.Subscriber as a
// broker.Broker, so that queuekit code — Consume with its guarantees, the
// middleware, the conformance suite — runs on a Watermill backend.
// NewGoChannel does it for a GoChannel; package wmamqp for watermill-amqp.
// There is no URL scheme: Watermill pub/subs are configured in code.
//
// Mapping:
//
//   - Message.ID is the Watermill UUID; Key travels in metadata entry
//     MetadataKey ("queuekit-key") and PublishedAt in broker.HeaderPublishedAt;
//     Headers are the rest of the metadata, both ways. Message.Attempt is 0:
//     Watermill counts no deliveries.
//   - Publish hands the messages to the Watermill publisher one at a time,
//     so that a failure names the message that failed (a
//     *broker.PublishError; the ones after it are not attempted). It returns
//     when the Watermill publisher returns: once RabbitMQ confirmed with
//     watermill-amqp's ConfirmDelivery, once the message is handed to
//     GoChannel's goroutines with GoChannel. Watermill's errors carry no
//     classification: they are reported as transient.
//   - Ack is the Watermill Ack, Nack(0) the Watermill Nack (the backend
//     redelivers: GoChannel resends at once, watermill-amqp requeues).
//   - Nack(delay): Watermill has no delayed nack, so the bridge keeps the
//     message in flight — unsettled on the backend — for delay, then nacks it.
//     Redelivery thus comes no sooner than delay and the DelayedNack claim is
//     honest on every backend, with two costs: a subscription that hands out
//     one message at a time (watermill-amqp, watermill-kafka) hands out
//     nothing else meanwhile, and a crash during the delay lets the backend
//     redeliver sooner (as it redelivers any unsettled message).
//   - SubscriberOptions.AckTimeout > 0 nacks a delivery left unsettled that
//     long; its late Ack returns ErrExpired. 0 means no timeout, as in
//     Watermill.
//   - Each queuekit subscriber calls Subscribe on the backend (see
//     Options.Competing for how many times) and reads the subscription
//     channels directly: the bridge holds no buffer of its own. When it
//     closes, a message taken from a channel but not yet returned by Receive,
//     every unsettled delivery and every delayed nack still waiting are nacked
//     at once, so the bridge never drops a message; what the backend then does
//     with it is the backend's semantics (watermill-amqp requeues it, GoChannel
//     drops it).
//   - Capabilities: the backend's claims come from Options.Capabilities, and
//     the bridge adds DelayedNack and MaxMessageSize; AttemptCount and
//     DeadLetter are never claimed.
//
// # queuekit as Watermill
//
// NewPublisher and NewSubscriber expose any queuekit publisher and broker as
// a Watermill message.Publisher and message.Subscriber, so that a Watermill
// Router runs its handlers unchanged on any queuekit adapter (mem://, Kafka,
// RabbitMQ, SQS, Pub/Sub). Each Subscribe call is one queuekit subscriber of
// SubscriberConfig.Subscription's group; Watermill's Ack and Nack become the
// delivery's Ack and Nack(SubscriberConfig.NackDelay); the metadata carries
// the key, the published-at time and the attempt count (broker.HeaderAttempt).
// Handler and Middleware turn queuekit handlers and middleware (retry, dedupe,
// timeout, recover, ...) into Watermill handler functions and handler
// middleware.
package watermill
