// Package kafka is queuekit's Kafka adapter, built on franz-go
// (github.com/twmb/franz-go/pkg/kgo). Importing it registers the kafka://
// URL scheme for broker.Open; New takes Options (kgo options, or an existing
// *kgo.Client) and returns the adapter's *Broker, which broker.New wraps in
// the API every broker shares. broker.Broker.As gives the *Broker back (for
// Kafka's own operations below) or its *kgo.Client and *kadm.Client.
//
// # URL
//
//	kafka://[user:password@]host:port[,host:port...]/?param=value&...
//
// A host without a port gets 9092; a port must be in [1, 65535]. IPv6
// literals work only as the first host. The URL has no path: topics are
// named in Publish and in SubscriberOptions. Unknown parameters and values
// out of range are an InvalidArgument error that lists the parameters:
//
//	client_id          Kafka client ID (default kgo's "kgo")
//	partitions         partitions of topics the adapter creates, 1 to 1048576 (default 3)
//	replication        replication factor of those topics: -1, the broker's default
//	                   (the default), or 1 to 16384
//	create_topics      create missing topics on first publish, subscribe or Declare
//	                   (default true); false makes a missing topic a NotFound error
//	group              consumer group of subscribers that name none (SubscriberOptions.Group
//	                   empty or "default"); default "default"
//	start              where a group without commits starts: earliest (default) or latest
//	nack               Nack strategy: pause (default) or retry-topic (see below)
//	commit             interval (default): acks are committed every commit_interval;
//	                   ack: every Ack waits for the commit covering it. AtMostOnce
//	                   subscribers commit on ack whatever this says
//	commit_interval    how often acknowledged offsets are committed, > 0 (default 1s)
//	isolation          read_committed (default) or read_uncommitted
//	drain_timeout      how long a rebalance waits for in-flight deliveries of a revoked
//	                   partition before giving them up un-committed, > 0 (default 10s)
//	prefetch           deliveries a subscriber holds unsettled when SubscriberOptions.Prefetch
//	                   is 0, 1 to 2147483647 (default 1024)
//	max_message_bytes  largest message Publish accepts, payload + key + ID + headers,
//	                   1 to 1073741824 (default 1000000); larger ones fail before any I/O
//	linger             producer linger, >= 0 (default 0)
//	compression        none (default), gzip, snappy, lz4 or zstd (see Compression below)
//	session_timeout    consumer group session timeout, > 0 (default kgo's 45s)
//	dial_timeout       how long New waits for a broker to answer, > 0 (default 10s)
//	tls                true to connect with TLS (implied by the tls_* parameters)
//	tls_ca             PEM file of the CA that signed the brokers' certificates
//	tls_cert, tls_key  PEM files of a client certificate and its key
//	tls_server_name    server name to verify instead of the host's
//	sasl               plain, scram-sha-256 or scram-sha-512, with user:password@ in
//	                   the URL (required when the URL has credentials)
//
// Passwords never appear in errors.
//
// # Topics and groups
//
// Topic names follow Kafka's rules — 1 to 249 ASCII letters, digits, '.',
// '_' and '-', not "." or ".." — and are checked before any I/O, as are
// the retry and dead-letter topics derived from them. Topics are created
// with the partitions and replication above (unless create_topics=false).
//
// Kafka keeps every message whether or not a consumer group will read it,
// so the adapter enforces queuekit's rule itself: Publish to a topic on
// which no group was declared fails with broker.ErrNoGroup (NotFound).
// A group is declared by broker.Broker.Declare(ctx, topic, groups...) or by
// subscribing; HasGroup also finds groups made by other clients (committed
// offsets for the topic, or members subscribed to it). Declaring a group
// that has no committed offset on the topic commits the offset it would
// start from — the log start under start=earliest, so it also reads what
// the topic retained; the log end under start=latest — so that every
// message published afterwards reaches it, even before any member joins.
// A group with committed offsets keeps them.
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
// (see Partition). Keyless messages are spread over the partitions round
// robin, one message each, whether published one by one or in a batch.
// Messages over max_message_bytes fail with broker.ErrTooLarge before any
// I/O.
//
// # Compression
//
// Batches are produced uncompressed by default, because that is what every
// Kafka client reads out of the box: kafkajs (2.2.4) reads only gzip and
// uncompressed batches, and its consumers crash on snappy, lz4 or zstd
// (franz-go's own default is snappy). The cost is bytes: on the network,
// and on the brokers' disks when the topic does not recompress
// (compression.type=producer, Kafka's default). Set compression=gzip for
// compressible payloads read by kafkajs (gzip costs the most CPU of the
// codecs), or snappy, lz4 or zstd when every consumer has the codec (the
// Java client, librdkafka, franz-go, kafka-go and Sarama do).
//
// # Consuming
//
// A Subscriber is one member of a consumer group: the group's members split
// the topic's partitions, and every group gets every message. Deliveries
// come in offset order per partition, hence in order per key; Consume's
// PerKey ordering (SubscriberOptions.Ordering) keeps that order with
// concurrent handlers. A subscriber takes each fetch from franz-go whole,
// as a PollFetches loop does, so that the next fetch is on its way while
// this one is handled, and decodes records into messages as receivers ask
// for them: prefetch bounds the deliveries handed out and not yet settled,
// not what is fetched (at most one fetch waits undecoded, and franz-go
// holds the next: fetch sizes are franz-go's defaults, 1 MiB per partition
// and 50 MiB per request, which Options.ClientOptions may change).
//
// A delivered Message's Payload is the record's value where the client
// read it — the fetch response, or the batch it decompressed — not a copy,
// as with franz-go's own records: a Message or Payload kept after its
// handler returns keeps that whole response alive (up to 1 MiB per
// partition fetched, 50 MiB at most, by default), so copy the payload
// (bytes.Clone) to keep it for long. Key, ID and header values are copies, never the fetch's memory: an
// ID a dedupe store keeps holds at most a 4 KiB buffer that it shares with
// other keys and IDs.
//
// Delivery semantics:
//
//   - Offsets are committed only up to the lowest un-acknowledged offset of
//     each partition, so concurrent handlers never commit past a message
//     still in flight. Commits happen every commit_interval, when a
//     partition is revoked, and at Close; a crash redelivers what was
//     acknowledged since the last commit (at-least-once).
//   - At-most-once: a subscriber declared with SubscriberOptions.Guarantee
//     AtMostOnce commits on ack — each Ack returns once the offset commit
//     covering it succeeded (concurrent acks share one commit) — and
//     Consume acks before handling, so a crash never makes the group handle
//     a message twice, whatever the URL says. commit=ack (Options.
//     CommitOnAck) does the same for every subscriber.
//   - On a rebalance the revoked partitions stop delivering at once; the
//     deliveries in flight get drain_timeout to be settled, then the
//     watermark is committed. Anything still unsettled is given up
//     un-committed and goes to the partition's new owner; acking it later
//     returns an error.
//   - SubscriberOptions.AckTimeout > 0 redelivers a delivery left unsettled
//     that long, as if its consumer had died; 0 (the default) relies on
//     Kafka's session timeout to detect dead consumers.
//
// # Records from other producers
//
// A record without a queuekit-id header gets the ID "topic/partition/offset",
// stable across redeliveries. A producer that wants to choose the ID (the
// key deduplication works on) sets the queuekit-id header: that is the
// interop way to carry an ID. The queuekit-attempt and queuekit-published-at
// headers of other producers are dropped, not handed on: a delivery's
// Attempt is the adapter's own count, and PublishedAt is the record's
// timestamp. (queuekit's Publish refuses all three as user headers.)
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
//     holds up the retry partition behind it. Subscribing with PerKey
//     ordering is therefore refused (Unsupported) under retry-topic, and
//     Capabilities does not claim per-key ordering.
//
// Message.Attempt counts deliveries from 1. Kafka keeps no count, so the
// adapter does: in memory while a partition stays with a subscriber, in the
// metadata of every offset commit for the records in flight (so the member
// that takes a partition over after a crash or rebalance continues the
// count; deliveries since the last commit before a crash are not counted),
// and in the queuekit-attempt header of the records the retry path writes
// to the retry topic (honoured there only). With SubscriberOptions.
// MaxAttempts > 0 a message nacked (or timed out) on its last attempt is
// published to DeadLetterTopic (default <topic>.dlq) with the reason,
// attempt count, original topic, partition and offset in headers, then
// acknowledged.
//
// # Kafka's own operations
//
// Broker.CreateTopic creates topics with configs such as
// cleanup.policy=compact (tombstones, nil payloads, pass through as nil);
// Lag reports a group's lag per partition, and Backlog the same through
// broker.Broker.Backlog for the queuekit command (a group that never
// committed lags by the whole retained log, or by nothing under
// start=latest); CheckBalance reports idle members, hot partitions and
// starved ones; NewProcessor runs an exactly-once consume-transform-produce
// loop on Kafka transactions. Client, Admin and Subscriber.Client are
// escape hatches to franz-go.
//
// # Offsets in your database: ConsumeTx
//
// Broker.ConsumeTx consumes a topic with the group's offsets kept in the
// application's own database (PostgreSQL, or MariaDB/MySQL) instead of in
// Kafka, so that what the handler writes and the consumption of the record
// that caused it commit in one transaction:
//
//	store := kafka.OffsetStore{DB: db} // PostgreSQL; Dialect: kafka.MySQL for MariaDB/MySQL
//	err := store.Migrate(ctx)          // once, or Schema's statements in your migrations
//	err = kb.ConsumeTx(ctx, kafka.ConsumeTxOptions{Topic: "orders", Group: "shipping", Store: store},
//		func(ctx context.Context, tx *sql.Tx, m *broker.Message) error {
//			_, err := tx.ExecContext(ctx, "INSERT INTO shipments (order_id) VALUES ($1)", m.Key)
//			return err // commits with the offset, or rolls back with it
//		})
//
// How it works:
//
//   - Each batch of records (ConsumeTxOptions.MaxBatch, default 100; 1
//     gives every record its own transaction) is one transaction: first
//     the offsets row of each partition in the batch is moved past the
//     batch, then the handler runs over the records in offset order, then
//     COMMIT. All of it commits, or none of it. Larger batches mean fewer
//     commits (one fsync each) and more work redone after a crash.
//   - When the group assigns a partition, the member claims it in the
//     table — the row's epoch goes up by one — and starts at the stored
//     offset. A partition without a row starts where the group's Kafka
//     commit says (so a group can move to ConsumeTx from a Subscriber), or
//     at StartOffset.
//   - Fencing: the UPDATE that moves a partition's offset matches only the
//     epoch of this member's claim, and only if the stored offset is not
//     past the batch's first record. A member that lost its partitions
//     without noticing (stalled longer than its session, cut off from
//     Kafka) cannot commit once another member has claimed them: its
//     UPDATE matches no row, the transaction rolls back with the
//     handler's writes, and ConsumeTx returns ErrFenced. The claim and the
//     UPDATE take the same row lock, so a claim made while the old owner's
//     batch is in flight waits for that batch to end and reads the offset
//     it committed. The database decides who may commit, not Kafka's group
//     generation, because the refusal has to happen in the transaction
//     that holds the effect.
//   - Rebalances happen only between batches (kgo.BlockRebalanceOnPoll): a
//     partition being revoked finishes its batch first. A batch must
//     therefore take less than the group's rebalance timeout
//     (kgo.RebalanceTimeout in ClientOptions, 60s by default); a member
//     that takes longer is removed from the group and fenced.
//   - Kafka's committed offsets follow the database's, never ahead of them
//     (committed every commit_interval and on revoke), so that Lag,
//     Backlog and the queuekit command see the group's progress. ConsumeTx
//     does not read them for a partition that has a row.
//
// The guarantee: the handler's writes for each record of the topic are
// committed exactly once — through crashes at any point (the tests kill
// the consumer with SIGKILL mid-transaction), restarts, rebalances and
// members that lost their partitions — provided that the handler's effects
// are writes made in tx (an e-mail, an HTTP call or another database
// happen at least once), that it neither commits nor rolls back tx, and
// that the group and the table are used by ConsumeTx only. The handler may
// see a record more than once (a rolled-back batch is handled again); only
// its committed effect is once. Records come in offset order per
// partition; Message.Attempt is always 1. "Exactly once" is per record:
// the same message published twice (an outbox relay that died between
// the broker's confirmation and its own commit) is two records, handled
// twice, with the same ID — dedupe those by ID in the handler (a unique
// key on the message ID in your own table) or use the inbox.
//
// ConsumeTx returns nil once its ctx is done, after letting the batch in
// progress finish and commit (the handler's context ends drain_timeout
// after ctx), and an error when the handler fails (the batch is rolled back
// and the error names the record), when the database fails, or when the
// member was fenced; it leaves the group first. Nothing is lost: call it
// again and it resumes from the stored offsets. A record the handler can
// never handle fails every ConsumeTx that reaches it: record it in tx (a
// dead-letter table) and return nil to move past it. To replay or skip, stop the consumers
// and set next_offset. A record below the stored offset (the topic was
// recreated, its log truncated) is an error, never silently skipped.
//
// Use ConsumeTx for Kafka when the effects go to one SQL database: no
// dedupe table to grow and purge (one row per partition), no ID lookups.
// On the other brokers, which have no offsets, the transactional inbox
// (middleware/dedupe/pgstore.Inbox) gives the same exactly-once effect by
// recording each message ID in the handler's transaction; it also removes
// duplicates published under one ID.
//
// OffsetStore.Migrate creates the table (Table, default queuekit_offsets).
// On PostgreSQL:
//
//	CREATE TABLE IF NOT EXISTS queuekit_offsets (
//		group_id    text        NOT NULL,
//		topic       text        NOT NULL,
//		part        integer     NOT NULL,
//		next_offset bigint      NOT NULL, -- the next record to consume; -1: none yet
//		epoch       bigint      NOT NULL, -- bumped by each claim: the fencing token
//		claimed_by  text        NOT NULL, -- host/pid/random of the claiming process
//		updated_at  timestamptz NOT NULL,
//		PRIMARY KEY (group_id, topic, part)
//	);
//
// On MariaDB (10.6+) and MySQL (8.0+), where group names are limited to
// 255 characters:
//
//	CREATE TABLE IF NOT EXISTS queuekit_offsets (
//		group_id    VARCHAR(255) NOT NULL,
//		topic       VARCHAR(249) NOT NULL,
//		part        INT          NOT NULL,
//		next_offset BIGINT       NOT NULL,
//		epoch       BIGINT       NOT NULL,
//		claimed_by  VARCHAR(255) NOT NULL,
//		updated_at  DATETIME(6)  NOT NULL,
//		PRIMARY KEY (group_id, topic, part)
//	) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
package kafka
