// Package broker is queuekit's user API: one way to publish and consume over
// Kafka, RabbitMQ, SQS, Pub/Sub and the embedded mem:// broker.
//
// Open a broker by URL (the adapter registers its scheme when imported),
// publish with a key, headers and an ID, and consume under a delivery
// guarantee:
//
//	b, err := broker.Open(ctx, "mem://")
//	pub, err := b.NewPublisher(ctx)
//	err = pub.Publish(ctx, "orders", &broker.Message{Key: "order-1", Payload: body})
//
//	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
//	err = broker.Consume(ctx, sub, handler, broker.ConsumeOptions{Concurrency: 8})
//
// Consume enforces the guarantee the same way on every broker:
// at-least-once (the default) acks only after the handler returns nil,
// at-most-once acks before the handler runs, and effectively-once adds an
// idempotency record keyed by message ID (see Idempotent). Under per-key
// ordering a key's messages are handled one at a time, in order, a failed
// one retried in place before the key's next.
//
// ConsumeBatch does the same for a BatchHandler, which gets up to MaxBatch
// messages per call (what has arrived, or what arrives within MaxWait) and
// returns a result per message: one database round trip for a batch instead
// of one per message, under the same guarantees, a key never in two batches
// at once and its messages in order within one:
//
//	err = broker.ConsumeBatch(ctx, sub, broker.BatchHandlerFunc(insertAll), broker.BatchOptions{MaxBatch: 100, MaxWait: 5 * time.Millisecond})
//
// Adapters implement Broker, Publisher, Subscriber and Delivery, register a
// Driver for their URL scheme, and prove themselves with the conformance
// package.
package broker
