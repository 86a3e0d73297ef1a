// Package kafka is queuekit's Kafka adapter, built on franz-go
// (github.com/twmb/franz-go/pkg/kgo). Importing it registers the kafka://
// URL scheme; New takes Options (kgo options, or an existing *kgo.Client).
//
// # URL
//
//	kafka://[user:password@]host:port[,host:port...]/?param=value&...
//
// A host without a port gets 9092. IPv6 literals work only as the first
// host. The URL has no path: topics are named in Publish and in
// SubscriberOptions. Unknown parameters are an error that lists these:
//
//	client_id          Kafka client ID (default kgo's "kgo")
//	partitions         partitions of topics the adapter creates (default 3)
//	replication        replication factor of those topics (default -1, the broker's default)
//	create_topics      create missing topics on first publish or subscribe (default true);
//	                   false makes a missing topic a NotFound error
//	group              consumer group when SubscriberOptions.Group is empty (default "default")
//	start              where a group without commits starts: earliest (default) or latest
//	nack               Nack strategy: pause (default) or retry-topic (see below)
//	commit             interval (default): acks are committed every commit_interval;
//	                   ack: every Ack waits for the commit covering it (use for at-most-once)
//	commit_interval    how often acknowledged offsets are committed (default 1s)
//	isolation          read_committed (default) or read_uncommitted
//	drain_timeout      how long a rebalance waits for in-flight deliveries of a revoked
//	                   partition before giving them up un-committed (default 10s)
//	prefetch           deliveries a subscriber holds unsettled when SubscriberOptions.Prefetch
//	                   is 0 (default 1024)
//	max_message_bytes  largest message Publish accepts, payload + key + ID + headers
//	                   (default 1000000); larger ones fail before any I/O
//	linger             producer linger (default 0)
//	compression        snappy (default, kgo's), none, gzip, lz4 or zstd
//	session_timeout    consumer group session timeout (default kgo's 45s)
//	dial_timeout       how long New waits for a broker to answer (default 10s)
//	tls                true to connect with TLS (implied by the tls_* parameters)
//	tls_ca             PEM file of the CA that signed the brokers' certificates
//	tls_cert, tls_key  PEM files of a client certificate and its key
//	tls_server_name    server name to verify instead of the host's
//	sasl               plain, scram-sha-256 or scram-sha-512, with user:password@ in
//	                   the URL (required when the URL has credentials)
//
// Passwords never appear in errors.
//
// # Publishing
//
// Publish returns nil only once Kafka acknowledged every message with
// acks=all through the idempotent producer. A batch is produced pipelined;
// a partial failure is a *broker.PublishError naming the failed messages.
// The message ID travels in the queuekit-id header, PublishedAt as the
// record timestamp, user headers as Kafka headers (a header name used twice
// by a third-party producer keeps its last value). A nil Payload is a
// tombstone. Keys are hashed with murmur2 exactly as the Java client,
// kafkajs' default partitioner, franz-go, segmentio/kafka-go's
// Murmur2Balancer and librdkafka's murmur2_random (not its default,
// consistent_random) do, so those producers put a key on the same partition
// (see Partition). Messages over
// max_message_bytes fail with broker.ErrTooLarge before any I/O.
//
// # Consuming
//
// A Subscriber is one member of a consumer group: the group's members split
// the topic's partitions, and every group gets every message. Deliveries
// come in offset order per partition, hence in order per key; Consume's
// PerKey ordering keeps that order with concurrent handlers. Delivery
// semantics:
//
//   - Offsets are committed only up to the lowest un-acknowledged offset of
//     each partition, so concurrent handlers never commit past a message
//     still in flight. Commits happen every commit_interval, when a
//     partition is revoked, and at Close; a crash redelivers what was
//     acknowledged since the last commit (at-least-once).
//   - On a rebalance the revoked partitions stop delivering at once; the
//     deliveries in flight get drain_timeout to be settled, then the
//     watermark is committed. Anything still unsettled is given up
//     un-committed and goes to the partition's new owner; acking it later
//     returns an error.
//   - At-most-once (Consume acks before handling) needs commit=ack
//     (Options.CommitOnAck): each Ack then returns once the offset commit
//     covering it succeeded, so a crash after the ack never redelivers.
//     Concurrent acks share one commit.
//   - SubscriberOptions.AckTimeout > 0 redelivers a delivery left unsettled
//     that long, as if its consumer had died; 0 (the default) relies on
//     Kafka's session timeout to detect dead consumers.
//   - A record from another producer has no queuekit-id header: its ID is
//     "topic/partition/offset", stable across redeliveries.
//
// # Nack and retries
//
// Kafka cannot nack one message, so Nack(delay) is one of two strategies
// (Options.Nack, URL nack=):
//
//   - pause (NackPause, the default): the message's partition is paused and
//     the message, with every later one of its partition, waits in memory
//     for delay, then comes again in offset order. Order is kept and
//     nothing is written to Kafka, but a long delay holds up the whole
//     partition.
//   - retry-topic (NackRetryTopic): the message is republished to
//     <topic>.<group>.retry with its attempt count and due time in headers
//     and the original is acknowledged. The partition keeps flowing, but a
//     retried message loses its place in its key's order, and a long delay
//     holds up the retry partition behind it.
//
// Message.Attempt counts deliveries from 1. Kafka keeps no count, so the
// adapter does: in memory while a partition stays with a subscriber, in the
// metadata of every offset commit for the records in flight (so the member
// that takes a partition over after a crash or rebalance continues the
// count; deliveries since the last commit before a crash are not counted),
// and in the queuekit-attempt header of retry-topic records. With
// SubscriberOptions.MaxAttempts > 0 a message nacked (or timed out) on its
// last attempt is published to DeadLetterTopic (default <topic>.dlq) with
// the reason, attempt count, original topic, partition and offset in
// headers, then acknowledged.
//
// # Kafka's own operations
//
// Broker.CreateTopic creates topics with configs such as
// cleanup.policy=compact (tombstones, nil payloads, pass through as nil);
// Lag reports a group's lag per partition, and Backlog the same through
// broker.BacklogReporter for the queuekit command; CheckBalance reports idle
// members and skewed partitions; NewProcessor runs an exactly-once
// consume-transform-produce loop on Kafka transactions. Client, Admin and
// Subscriber.Client are escape hatches to franz-go.
package kafka
