// Package rabbitmq is queuekit's RabbitMQ adapter, on
// github.com/rabbitmq/amqp091-go. Importing it registers the amqp:// and
// amqps:// URL schemes with broker.Open; New takes an existing
// *amqp091.Connection instead.
//
// # Topology
//
// Publishers send to one durable exchange (default "queuekit", direct) with
// the topic as routing key. A subscriber group is a durable queue named
// "<topic>.<group>" bound to the exchange with the topic, so subscribers of
// one group compete for its messages and every group gets every message.
// Exchanges and queues are declared when first used (or only verified, with
// passive=true) and declared again after a reconnection. Queues are quorum
// queues unless queue_type=classic.
//
// # Delivery semantics
//
//   - Publish returns nil only once RabbitMQ confirmed every message
//     (publisher confirms; many publishes in flight at once, up to
//     confirm_window per publisher). Messages are persistent and
//     mandatory: a message no queue is bound for (no group subscribes to
//     the topic yet) fails with kind NotFound instead of vanishing. A
//     message nacked by the broker, or whose confirmation was lost with the
//     connection, fails with kind Transient inside a *broker.PublishError;
//     none is reported published that the broker did not confirm.
//   - The message ID travels in the AMQP message-id property, PublishedAt
//     in the timestamp property (and to the nanosecond in the
//     queuekit-published-at header), the key in the queuekit-key header,
//     and user headers in the headers table, unchanged. Headers written by
//     other AMQP clients arrive as strings.
//   - Consumers prefetch (basic.qos) SubscriberOptions.Prefetch, default
//     prefetch; that is the backpressure. Ack acknowledges; Nack(0)
//     requeues at once; Nack(delay) moves the message through a delay queue
//     whose TTL dead-letters it back, so it returns no sooner than delay
//     (rounded up to one of ten steps per decade, at most 25% more).
//   - Message.Attempt comes from x-delivery-count (quorum queues only; it
//     is 0 on classic queues), plus the deliveries before a delayed nack.
//   - With quorum queues and SubscriberOptions.MaxAttempts > 0, the queue
//     dead-letters natively (x-dead-letter-exchange = the exchange,
//     x-dead-letter-routing-key = DeadLetterTopic, x-delivery-limit =
//     MaxAttempts-1, at-least-once dead-lettering): a message nacked on
//     its MaxAttempts-th attempt is rejected, and one whose consumer dies
//     that often hits the delivery limit. The group's queue on
//     DeadLetterTopic is declared with it, so dead letters wait there; they
//     arrive with the queuekit-dead-reason and queuekit-original-topic
//     headers, from RabbitMQ's x-death.
//   - Unacknowledged deliveries go back to the queue when their channel
//     closes (subscriber closed, consumer crashed, connection lost), or
//     after SubscriberOptions.AckTimeout when it is set (the adapter then
//     requeues them itself; otherwise the server's consumer_timeout, 30
//     minutes by default, applies).
//   - SubscriberOptions.Ordering = PerKey makes the group's queue
//     single-active-consumer: one subscriber receives at a time, in queue
//     order, and broker.Consume dispatches per key inside it.
//   - Recovery: when a connection drops, the adapter reconnects with
//     exponential backoff (capped by reconnect_max_wait), opens new
//     channels, declares its topology again and resumes consuming.
//     Publishes not yet confirmed fail with kind Transient; Publish and
//     Receive wait for the reconnection as long as their ctx allows.
//     Nothing is retried in a hidden loop.
//
// # URL
//
//	amqp://user:password@host:5672/vhost?prefetch=64&queue_type=quorum
//	amqps://user:password@host:5671/vhost?cacertfile=/etc/ca.pem
//
// The vhost is the URL path ("/" or empty: the default vhost "/"; encode a
// vhost named "/x" as %2Fx). Parameters, all optional; an unknown one is an
// error:
//
//	exchange            exchange publishers send to (default "queuekit")
//	exchange_type       direct (default) or topic (group topics may then use * and #)
//	queue_type          quorum (default) or classic
//	prefetch            subscriber prefetch when SubscriberOptions.Prefetch is 0 (default 128)
//	confirm_window      unconfirmed publishes per publisher (default 512)
//	passive             true: verify the exchange and queues exist instead of declaring them
//	mandatory           false: let RabbitMQ drop unroutable messages instead of failing Publish (default true)
//	max_message_size    largest message Publish accepts, in bytes (default 134217728)
//	connection_name     connection name shown by the management UI (default "queuekit")
//	heartbeat           AMQP heartbeat interval (default 10s; 0 uses the server's)
//	connect_timeout     bound on each dial and handshake (default 10s)
//	reconnect_max_wait  cap of the reconnection backoff (default 5s)
//	cacertfile, certfile, keyfile, server_name_indication
//	                    TLS settings, amqps:// only (PEM files)
//
// Credentials never appear in errors or logs.
package rabbitmq
