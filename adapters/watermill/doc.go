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
//
// # Conformance through the bridge (measured)
//
// The conformance suite runs unchanged through the bridge against GoChannel
// (gochannel.Config{}, TestConformanceGoChannel) and watermill-amqp on
// RabbitMQ 3.10 (wmamqp.Config, wmamqp's TestConformance), with
// conformance.Check: the tests assert the verdicts below, so a change either
// way is noticed. "unsupported" properties need a claim the backend does not
// make; for GoChannel each was also run with every capability claimed, and
// fails as shown. The JSON reports are in the reports directory
// (QUEUEKIT_CONFORMANCE_REPORT=<dir>/{adapter}.json).
//
//	property                  GoChannel                            watermill-amqp
//	roundtrip                 pass                                 pass
//	alo.nack-redelivers       pass                                 pass
//	alo.crash-redelivers      unsupported (claimed: lost 5 of 5)   pass
//	alo.no-loss               pass (1000, 0 duplicates)            pass (1000, 2 subscribers)
//	amo.no-redelivery         pass                                 pass
//	group.competing           unsupported (claimed: 7 of 10 to     pass
//	                          both subscribers)
//	group.fanout              pass                                 pass
//	order.per-key             unsupported (claimed: ~790 of 1000   pass (single-active-consumer)
//	                          reordered)
//	nack.delay                pass (bridge timer, 1.000s)          pass (bridge timer, 1.002s)
//	dlq.after-max-attempts    unsupported                          unsupported
//	close.publisher-flush     pass                                 pass
//	close.graceful-consume    FAIL: lost 26 of 30                  pass
//	headers.roundtrip         pass                                 pass
//	publish.oversize-refused  unsupported (no limit)               pass (bridge check, 128 MiB)
//	ack.idempotent            pass                                 pass
//	attempt.count             unsupported                          unsupported
//
// GoChannel keeps no message for a subscriber that is gone: what a closed
// subscription had not acked — including what Consume gave back with Nack at
// shutdown — is dropped, so the next subscriber of the group gets nothing
// (close.graceful-consume, alo.crash-redelivers), and every subscriber gets
// every message (no consumer groups). watermill-amqp keeps all the claimed
// properties through the bridge; note that two of them rely on the bridge
// making several Subscribe calls per subscriber (Options.Competing): with one
// call, as a Watermill Router makes, a subscriber never holds more than one
// message, so alo.crash-redelivers (which holds 5 unsettled) cannot even
// start. Neither backend counts attempts or dead-letters (Watermill does that
// in Router middleware, not in its pub/subs).
//
// # Benchmarks against Watermill (measured)
//
// adapters/watermill/wmbench, end to end (b.N messages of 256 B published 64
// per call while one consumer acks each) and publish alone, each library
// with its recommended settings (see the benchmark docs): queuekit adapters
// with their defaults and broker.Consume; GoChannel with gochannel.Config{};
// watermill-kafka v3.0.6 with DefaultSaramaSyncPublisherConfig and
// DefaultSaramaSubscriberConfig (OffsetOldest) on a kfake child process;
// watermill-amqp v3.0.2 with NewDurableQueueConfig plus ConfirmDelivery. One
// run, 2 shared cores under load (figures vary between runs; the ratios are
// from the same run):
//
//	benchmark                            watermill msg/s  queuekit msg/s  ratio  allocs/msg (wm / qk)
//	MemoryVsGoChannel                              58926          402299   6.8x      26.4 / 2.1
//	MemoryPublishVsGoChannel                       75488          474335   6.3x      26.5 / 2.1
//	KafkaVsWatermill                                2253           71467  31.7x     147.5 / 7.5
//	KafkaPublishVsWatermill                         2346           82100  35.0x     146.7 / 7.6
//	RabbitMQVsWatermill                              699            4867   7.0x     125.4 / 108.6
//	RabbitMQPublishVsWatermill                       477            4822  10.1x     125.6 / 108.5
//
// Where the difference comes from: watermill-kafka and watermill-amqp
// publish one message per round trip (a Sarama sync producer; a confirm
// awaited per message), where queuekit pipelines a batch; and their
// subscribers hand out one message per partition or subscription until it is
// acked, where queuekit prefetches. GoChannel starts goroutines per message
// and subscriber and waits for each ack.
package watermill
