// Package rabbitmq is queuekit's RabbitMQ driver, on
// github.com/rabbitmq/amqp091-go. Importing it registers the amqp:// and
// amqps:// URL schemes with broker.Open; Dial (a URL) and New (an existing
// *amqp091.Connection) return the driver, *Broker, for broker.New, with its
// admin methods (Inspect, Queues, DeadLetterQueues, DeleteSubscription,
// DeleteTopic, DeclareSubscription). broker.Broker.As gives the *Broker and
// the publishing *amqp091.Connection; a publisher's or subscriber's As gives
// its *amqp091.Channel and connection.
//
// # Topology
//
// Publishers send to one durable exchange (default "queuekit", direct) with
// the topic as routing key. A subscriber group is a durable queue named
// "<topic>.<group>" bound to the exchange with the topic, so subscribers of
// one group compete for its messages and every group gets every message
// published after the group was declared — by its first subscriber or by
// broker.Broker.Declare (which gives new queues a subscriber's default
// settings and keeps existing ones as they are; DeclareSubscription
// declares with a subscriber's MaxAttempts and Ordering). Exchanges and
// queues are declared when first used (or only verified, with
// passive=true) and declared again after a reconnection. Queues are quorum
// queues unless queue_type=classic.
//
// Publishing to a topic no group was declared on fails: messages are
// mandatory, and one RabbitMQ returns as unroutable fails with an error
// matching broker.ErrNoGroup (kind NotFound), per message of the batch.
//
// Because AMQP cannot list queues, each topic also has a topology
// registry, a stream queue "<topic>.qk-topology" in which every process
// records the queues it declares for the topic (group, dead-letter, delay
// and schedule queues). DeadLetterQueues and DeleteTopic read it, so they find
// what other processes declared; recording is best effort (a warning is
// logged once when the server has no streams or the user may not declare
// one), and registry=false turns it off.
//
// # Names and limits
//
// RabbitMQ closes the whole connection — under every other publisher or
// subscriber sharing it — on a name or a frame it cannot take, so the
// adapter checks, before any I/O and as InvalidArgument errors: topics and
// dead-letter topics (routing keys) are at most 255 bytes of UTF-8; a
// group's queue name at most 233, leaving room for its delay queues'
// suffix, and it may not contain ".qk-delay-" or end with ".qk-topology"
// or ".qk-active";
// a message ID at most 255 bytes; header names at most 128 bytes and none
// of the adapter's own (queuekit-key, queuekit-rabbitmq-*, x-delivery-count,
// x-death, x-first-death-*, x-last-death-*); and a message's properties
// and headers must fit one AMQP header frame of the negotiated frame_max
// (131072 bytes by default) with 8 KiB to spare for the headers RabbitMQ
// adds on the way. Nack delays and DeliverAt are at most 4,000,000 s ahead
// (RabbitMQ's longest TTL, less the delay queue's expiry).
//
// # Delivery semantics
//
//   - Publish returns nil only once RabbitMQ confirmed every message
//     (publisher confirms; many publishes in flight at once, up to
//     confirm_window per publisher). Messages are persistent and
//     mandatory (see Topology). A message nacked by the broker, or whose
//     confirmation was lost with the connection, fails with kind Transient
//     inside a *broker.PublishError; none is reported published that the
//     broker did not confirm.
//     A publisher streams onto its channel from one sender goroutine
//     (calls queue their messages for it, in call order) and settles
//     confirmations in a second one, which frees each window slot as soon
//     as its confirmation arrives; on connections the adapter dials, a
//     burst of publishes leaves in a few large writes instead of one
//     write per message (see corkConn).
//   - The message ID travels in the AMQP message-id property, PublishedAt
//     in the timestamp property (and to the nanosecond in the
//     queuekit-published-at header), the key in the queuekit-key header,
//     and user headers in the headers table, unchanged. Headers written by
//     other AMQP clients arrive as strings.
//   - Consumers prefetch (basic.qos) SubscriberOptions.Prefetch, default
//     prefetch (1,000); that is the backpressure. Nack(0) requeues at
//     once; Nack(delay) moves the message through a delay queue whose TTL
//     dead-letters it back, so it returns no sooner than delay (rounded
//     up to one of ten steps per decade, at most 25% more).
//   - Acks are coalesced: a subscriber sends a run of acks of contiguous
//     delivery tags as one basic.ack with multiple=true — when the run
//     reaches a quarter of the prefetch (at most 100), on Close, before
//     its channel is replaced, and at the latest 1ms after the first ack
//     it holds (acks held behind a delivery still unsettled then go out
//     one by one). A multiple ack never covers a nack or reject: those
//     are sent at once, and only then can a run pass their tag. Ack
//     returns nil once the ack is recorded; it fails (Transient) when the delivery's channel is
//     closed already or the write carrying the ack failed, and a later
//     failed write is logged with the number of acks it lost. Waiting for
//     the write in every Ack would send each ack on its own, and a
//     written ack is no more confirmed than a held one: RabbitMQ does not
//     answer basic.ack, so before coalescing too an Ack returning nil
//     only meant that the frame had left the process. What coalescing
//     adds is a window of at most 1ms in which a crash (or a cut
//     connection) loses an ack already returned: the message is then
//     redelivered, a duplicate that at-least-once allows, never a loss.
//     Acks held for a channel that died are dropped with it, never sent on
//     the one that replaces it (delivery tags are per channel). Close
//     sends the acks held, then cancels the consumer (RabbitMQ answers
//     once the queue applied it, after the acks) and only then closes the
//     channel: quorum queues were seen to requeue messages acked just
//     before their channel closed.
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
//   - Guarantee AtMostOnce: Receive acknowledges each message (one
//     multiple ack per batch it receives) and waits for RabbitMQ to have
//     processed the acknowledgement (a synchronous call on the same
//     channel after it) before handing the message out, so a consumer
//     that crashes afterwards does not get it back; prefetch still bounds
//     what is in flight, and what was received but not handed out when a
//     subscriber closes goes back to the queue. Ack is a no-op and Nack an
//     Unsupported error. (No-ack consuming would be at-most-once too, but
//     RabbitMQ ignores the prefetch of no-ack consumers, and every message
//     buffered in the client would be lost on Close.) Caveat: a quorum
//     queue applies acks after the channel answered that call, and
//     RabbitMQ 3.10 was seen to requeue acked messages when the channel
//     closed right after: with one ack and one basic.qos per message, 2
//     of 20 runs of 400 messages closed at once got some back; with one
//     multiple ack per batch, as here, 0 of 20. A crash right after a
//     receive may thus, rarely, redeliver.
//   - SubscriberOptions.Ordering = PerKey makes the group's queue
//     single-active-consumer: one subscriber receives at a time, in queue
//     order, and broker.Consume dispatches per key inside it. A group
//     declared before (by Declare) without that queue argument gets the
//     same from an activity lock: an exclusive, auto-delete queue
//     "<queue>.qk-active" that the active subscriber's connection holds
//     (RabbitMQ drops it with the connection) and standbys try every
//     250ms.
//   - Scheduled delivery (Message.DeliverAt, up to 4,000,000 s ahead;
//     Capabilities.ScheduledDelivery, except with passive=true): see below.
//   - Recovery: when a connection drops, the adapter reconnects with
//     exponential backoff (capped by reconnect_max_wait), opens new
//     channels, declares its topology again and resumes consuming.
//     Publishes not yet confirmed fail with kind Transient; Publish and
//     Receive wait for the reconnection as long as their ctx allows.
//     Nothing is retried in a hidden loop.
//
// # Scheduled delivery
//
// A message published with DeliverAt in the future goes, with the
// remaining delay as its per-message TTL (rounded up to the millisecond
// when it is sent, so never early), through a schedule queue of its topic,
// "<topic>.qk-delay-s<ms>ms", which dead-letters it to the exchange with
// the topic as routing key when it expires; the groups' queues get it then
// (at-least-once dead-lettering with quorum queues). Publish returns once
// RabbitMQ confirmed the message into the schedule queue. The way in is
// two exchanges per exchange, "<exchange>.qk-schedule" (of the exchange's
// type) and "<exchange>.qk-schedule-route" (headers): every declaration of
// a group binds the first to the second with the group's topic, so a
// scheduled message to a topic without a group is returned by RabbitMQ and
// fails with ErrNoGroup, as an immediate one does (and DeleteTopic, or
// DeleteSubscription of the last group, unbinds the topic). A group
// declared by an older version, or by a user the broker does not allow to
// declare these exchanges (a warning is logged once), is not reached by
// scheduled messages until a subscriber of it declares it again.
//
// Timing: RabbitMQ expires messages at the head of a queue only. There is
// one schedule queue per topic and delay bucket (ten per decade, as for
// delayed nacks; a message goes to the smallest bucket at least its
// delay), so a message waits behind one of its queue that is due later: it
// is then late by at most the bucket's width, under 25% of its delay. Only
// messages published to one topic with DeliverAt out of order within a
// bucket meet this; otherwise a message arrives within milliseconds of
// DeliverAt (the conformance suite measures it: publish.delay). A
// delivered message's DeliverAt is zero; its Attempt starts at 1.
//
// Order: a scheduled message leaves its key's publish order. It is
// delivered when due, after whatever its key published at once; messages
// of one schedule queue (same topic, same bucket) keep their publish order
// (so do those of one key scheduled for one time), and each reaches the
// group's queue in the order it expires, where per-key consumption
// (single active consumer) takes over.
//
// Schedule queues are recorded in the topic's registry (role
// RoleSchedule) once a message went through them, listed by Queues and
// deleted, with the messages not yet due, by DeleteTopic; unused, each
// deletes itself an hour after its TTL (x-expires).
//
// # URL
//
//	amqp://user:password@host:5672/vhost?prefetch=64&queue_type=quorum
//	amqps://user:password@host:5671/vhost?cacertfile=/etc/ca.pem
//
// The vhost is the URL path ("/" or empty: the default vhost "/"; encode a
// vhost named "/x" as %2Fx; at most 255 bytes); the port is 1..65535.
// Parameters, all optional; an unknown one, or a value out of range, is an
// InvalidArgument error:
//
//	exchange            exchange publishers send to (default "queuekit")
//	exchange_type       direct (default) or topic (group topics may then use * and #)
//	queue_type          quorum (default) or classic
//	prefetch            subscriber prefetch when SubscriberOptions.Prefetch is 0 (default 1000; 0..65535)
//	confirm_window      unconfirmed publishes per publisher (default 1000; 0..65535)
//	passive             true: verify the exchange and queues exist instead of declaring them
//	registry            false: keep no topology registry (a stream queue per topic; default true)
//	mandatory           true only (the default): unroutable messages fail Publish with ErrNoGroup
//	max_message_size    largest message Publish accepts, in bytes (default 134217728; at most 536870912)
//	connection_name     connection name shown by the management UI (default "queuekit"; <= 1024 bytes)
//	heartbeat           AMQP heartbeat interval (default 10s; 0 uses the server's; else 1s..65535s)
//	connect_timeout     bound on each dial and handshake (default 10s; > 0)
//	reconnect_max_wait  cap of the reconnection backoff (default 5s; not negative)
//	cacertfile, certfile, keyfile, server_name_indication
//	                    TLS settings, amqps:// only (PEM files)
//
// Credentials never appear in errors or logs.
package rabbitmq
