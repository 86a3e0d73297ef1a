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
// idempotency record keyed by message ID (see Idempotent).
//
// Adapters implement Broker, Publisher, Subscriber and Delivery, register a
// Driver for their URL scheme, and prove themselves with the conformance
// package.
package broker
