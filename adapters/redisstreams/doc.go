// Package redisstreams is queuekit's adapter for Redis Streams (Redis 7 or
// later), on github.com/redis/go-redis/v9. Importing it registers the
// redis+streams:// and rediss+streams:// (TLS) URL schemes for broker.Open;
// New takes a redis.UniversalClient the caller configured (a *redis.Client,
// a Sentinel failover client or a *redis.ClusterClient) and returns the
// adapter's *Broker, which broker.New wraps. broker.Broker.As gives back the
// *Broker (Backlog, DeleteTopic) or the client, as a redis.UniversalClient
// (or *redis.Client / *redis.ClusterClient when it is one).
//
// # URL
//
//	redis+streams://[user:password@]host[:port][/db]?param=value&...
//
// The host defaults to 127.0.0.1 and the port to 6379 (1 to 65535); db is
// the database number (default 0). rediss+streams:// connects with TLS,
// verifying the server against the system's roots; other TLS settings,
// Sentinel and Cluster take a client of the application's own (New).
// Unknown parameters and values out of range are an InvalidArgument error
// that lists the parameters; passwords never appear in errors.
//
//	prefix          put before every key the adapter makes (default none): the stream of
//	                topic T is prefix+T. Same character rules as names (below)
//	shards          streams a new topic is split into, 1 to 1024 (default 1); see Per-key order
//	maxlen          cap each stream at about this many entries (XADD MAXLEN ~); 0, the
//	                default, means no cap. A cap LOSES messages: Redis trims the oldest
//	                entries whether or not every group has read and acked them
//	ack_timeout     how long a delivery may stay unsettled before another consumer of
//	                the group claims it, when SubscriberOptions.AckTimeout is 0;
//	                >= 10ms (default 30s). Under PerKey also the shard lease's TTL
//	prefetch        deliveries a subscriber holds unsettled when SubscriberOptions.
//	                Prefetch is 0, 1 to 1048576 (default 1000)
//	batch           most entries one XREADGROUP (per shard) or claim asks for, 1 to
//	                10000 (default 500)
//	block           how long one XREADGROUP waits, 1ms to 1m (default 2s)
//	claim_interval  how often a subscriber looks for entries to claim, >= 1ms (default
//	                a quarter of its ack timeout, within 20ms and 1s)
//	max_size        largest message Publish accepts by broker.Message.Size, 1 to
//	                536870912 bytes (default 10485760); larger ones fail before any I/O
//	dial_timeout, read_timeout, write_timeout
//	                go-redis timeouts, > 0 (defaults 5s, 3s, 3s); a blocking read waits
//	                block plus 10s
//	pool_size       go-redis connection pool size, 0 (go-redis's default) to 65536
//
// The Broker made by Open owns its client and closes it with Close; a client
// given to New stays the caller's.
//
// # Keys and names
//
// A topic T is the stream prefix+T, and with shards=N > 1 also the streams
// {prefix+T}:1 ... {prefix+T}:N-1. The adapter keeps, next to it, a hash
// {prefix+T}:qk:meta (the shard count, and the ordering of each group), a
// sorted set {prefix+T}:qk:delay:<shard>:<group> per group and shard (entries
// nacked with a delay), {prefix+T}:qk:sched and {prefix+T}:qk:schedmsg
// (messages published for later), and under PerKey
// {prefix+T}:qk:lease:<shard>:<group> and {prefix+T}:qk:members:<group>. A
// key without braces hashes to the same Redis Cluster slot as the keys whose
// hash tag it is, so all the keys of a topic share one slot and the
// adapter's Lua scripts work on a cluster. DeleteTopic removes them all.
//
// Topic and group names (and the prefix) are 1 to 255 bytes of UTF-8 without
// spaces, control characters, '{' or '}' (braces would break the hash tag);
// they are checked before any I/O, as InvalidArgument errors, and so is the
// dead-letter topic.
//
// # Entries
//
// A message is one stream entry with the fields
//
//	_id     Message.ID
//	_key    Message.Key (absent when empty)
//	_at     Message.PublishedAt, Unix nanoseconds in decimal
//	h:NAME  header NAME, one field per header
//	_body   Message.Payload, byte for byte (binary-safe, may be empty)
//
// Entries written by other clients are read too: a field not named above is
// a header of its own name (redis-cli XADD s '*' _body hello user 42 gives a
// payload "hello" and a header user=42); an entry without _id gets the ID
// "<stream key>/<entry id>", stable across redeliveries; one without _at gets
// the time of its entry ID. A producer chooses the ID with _id. Headers (or
// fields) named queuekit-id, queuekit-attempt or queuekit-published-at are
// dropped, never handed on: a delivery's ID, Attempt and PublishedAt come
// from the fields above and from Redis's own delivery count. (queuekit's
// Publish refuses them as user headers.)
//
// # Topology
//
// Declare (broker.Broker.Declare) and NewSubscriber create the topic's
// streams (XGROUP CREATE ... MKSTREAM) and the named consumer groups,
// idempotently, and record the shard count; a topic keeps the count it was
// created with, whatever a later URL says, and producers and consumers
// read it from Redis. A group is created at $ — it receives every entry
// added afterwards — except on a stream that has no group yet, where it is
// created at 0 and receives everything the stream holds: what reached it
// while no group existed (dead letters, entries of other producers) would
// otherwise be read by no one. (A stream whose groups were all destroyed
// counts as having none: its next group reads what it retains.) The queuekit rule holds: a group receives
// every message published after it was declared, and Publish to a topic on
// which no group was declared fails with an error matching
// broker.ErrNoGroup (kind NotFound): package broker asks HasGroup (XINFO
// GROUPS on the topic's first stream) once per topic and publisher.
//
// # Publishing
//
// Publish sends one XADD per message, pipelined (messages scheduled for
// later go in one script call of the same pipeline, see Scheduled
// delivery), and returns nil once Redis answered every one; a failed one is
// named in a *broker.PublishError.
// Redis acknowledges an XADD once the entry is in memory: whether it
// survives a restart depends on the server's persistence (appendonly,
// appendfsync), and replication to replicas is asynchronous, so a failover
// can lose acknowledged entries (the adapter does not send WAIT). go-redis
// sends a command again when its connection failed (MaxRetries, 3 by
// default): an XADD whose reply was lost may be added twice, with the same
// _id, which deduplication by message ID absorbs. A message
// goes to the shard of its key (ShardOf: FNV-1a of the key modulo the
// shard count); keyless messages go round robin.
//
// # Delivery semantics
//
// A subscriber is one consumer (named qk-<host>-<pid>-<random>) of its
// group: the group's consumers compete for its entries, and each group gets
// every entry (fan-out). It reads new entries with XREADGROUP ... > (COUNT
// batch per shard, BLOCK block; on a *redis.Client without BLOCK right
// after a read that filled its count) and keeps at most prefetch
// deliveries unsettled. Every claim interval (and at once after a Nack) it claims, on
// each shard it reads, the entries of its group that are due again, with a
// Lua script that runs XPENDING and XCLAIM (XCLAIM counts a delivery):
// entries whose nack delay has passed, entries another consumer has left
// unsettled for the ack timeout, and entries of its own that it does not
// hold (their XREADGROUP reply was lost with a connection).
//
//   - At-least-once (the default): Ack queues the entry id and returns; the
//     subscriber sends the queued acks with its next XREADGROUP, in the same
//     round trip, while entries come, and otherwise (its reader waits for
//     entries or for room) in one pipeline of XACKs 1ms after the first;
//     Close sends what is left. A crash between Ack and the XACK
//     redelivers the message. A delivery
//     left unsettled for the ack timeout (its consumer died, or its handler
//     is slower than that) is claimed by another consumer of the group and
//     delivered again; a subscriber never claims back a delivery it still
//     holds, so with a single subscriber a slow handler is not raced by
//     its own redelivery. A late Ack of the first delivery still acks the
//     entry for the group.
//   - At-most-once (SubscriberOptions.Guarantee AtMostOnce): Ack sends XACK
//     and returns only once Redis removed the entry from the group's
//     pending list; when it was no longer there (another consumer claimed
//     it after the ack timeout and acked it first) Ack fails, so the
//     message is not handled twice. Consume acks before handling, so a
//     consumer killed after an Ack never makes the group handle the message
//     again: what it lost is lost, as at-most-once allows. Entries it had
//     read and not acked go to another consumer after the ack timeout and
//     are handled there once.
//   - Nack(delay) records the entry in the group's delay set with a due time
//     of the server's clock plus delay (rounded up to a millisecond); the
//     entry stays pending and is claimed again, by any consumer of the
//     group, once due. It keeps its entry ID; its delivery count grows by
//     one, as with any claim. There is no upper bound on the delay.
//   - Message.Attempt is Redis's delivery count of the entry: 1 on the first
//     delivery, +1 on each claim (after a nack, a timeout or a give-back).
//   - With SubscriberOptions.MaxAttempts > 0, a delivery nacked on attempt
//     MaxAttempts (Consume's in-place retries under PerKey count too), or
//     whose attempt MaxAttempts timed out, is dead-lettered: published to
//     DeadLetterTopic (default <topic>.dlq) with its ID, key, payload and
//     headers plus queuekit-dead-reason, queuekit-dead-attempts and
//     queuekit-original-topic, and then acked. A crash between the two
//     dead-letters it again: a dead letter may be duplicated, never lost.
//     The dead-letter topic needs no group beforehand: its first group gets
//     what is already there (see Topology).
//   - Close stops reading and claiming, sends the queued acks, gives back
//     what the consumer still holds (its pending entries move to the group's
//     parking consumer "qk-returned", due at once, or at the end of a nack
//     delay that is running) and deletes the consumer from the group. A
//     Close interrupts a blocking XREADGROUP at once on a *redis.Client
//     (CLIENT UNBLOCK on the reader's own connection); on other clients, and
//     a *redis.Client with an OnConnect hook, it may wait up to block.
//   - Entries trimmed by maxlen (or XDEL) before they were acked are gone:
//     a claim drops them from the pending list.
//
// # Throughput defaults
//
// bench_test.go pairs the adapter on its defaults with go-redis written
// carefully by hand. Publish pipelines the XADDs of each call (its batch is
// the caller's) and keeps up with hand-made pipelines. A subscriber reads
// up to batch (500) entries per XREADGROUP, holds up to prefetch (1000)
// unsettled, and sends the acks queued in the pipeline of its next
// XREADGROUP, as the hand-written loop does (the XACK of one batch with the
// XREADGROUP COUNT 500 of the next). On a *redis.Client the subscriber's
// reader has a connection of its own on which it speaks RESP itself
// (conn.go): it writes its XACKs and XREADGROUP in one write, reads the
// reply once into a buffer it reuses and decodes the entries from there,
// copying out only what a message keeps. The connection is made with the
// client's options (its Dialer, so TLS as the client does; credentials,
// database, client name), remade after a failure, and its commands are
// not seen by the client's hooks; a client with an OnConnect hook or
// streaming credentials, which the reader could not apply, reads with
// go-redis's XReadGroup instead. Publish builds every XADD's arguments of
// a call in a few allocations for the whole call (one allocation per
// message is left: Redis's reply).
//
// Measured (2 shared cores, redis-server CPU per message from /proc,
// commands from INFO commandstats): the loop makes one round trip per 500
// entries, the subscriber (then) one per 128; Redis's time inside XREADGROUP is
// about the same per message (1.35-1.45us), XACK's a little more for the
// subscriber (0.45us against 0.38: more, smaller XACKs). Before acks went
// with the reads the subscriber made a second round trip per batch for
// them and woke its acker twice per batch; sending them with the reads cut
// the subscriber's CPU per message by about 0.5us and redis-server's by
// about 0.15us. Reading on go-redis's raw reply reader (RawWriteToCmd)
// cost 2.9us of client CPU per message against the loop's 1.6-1.8: the
// reply parsed twice and an io.LimitedReader allocated per bulk string (9
// of the 14 allocations per message). On its own connection the
// subscriber takes 1.8-2.0us and 4.1 allocations per message (the
// payload, the copies a message keeps, its header map), against the
// loop's 1.6-1.8 and 16; publishing, 4.1 allocations per message against
// 11 and about the loop's CPU.
// The defaults were 128 and 256 until the reader had its own connection:
// with go-redis's reader, larger ones measured no faster. On its own
// connection, batch 500 and prefetch 1000 (the loop reads COUNT 500) took
// the consume benchmark from 0.89-0.90 to 1.00-1.01 of the loop in
// interleaved runs (redis-server does less per message with fewer, larger
// reads). The cost: a subscriber that crashes holds up to prefetch
// deliveries, which other consumers claim only after the ack timeout;
// lower prefetch (and batch) where that matters more than throughput.
//
// # Per-key order
//
// XREADGROUP hands entries to any consumer of a group, so per-key order
// needs more. A subscriber asking for SubscriberOptions.Ordering PerKey
// reads only the shards it leases: each shard of the topic is leased to one
// PerKey consumer of the group at a time (a key with the ack timeout as
// TTL, renewed every third of it), and each live consumer takes at most its
// fair share, ceil(shards / live consumers), giving up extra shards once the
// deliveries it took from them are settled. A consumer that takes a shard
// first claims everything pending on it, whoever held it, in stream order,
// then reads new entries; entries of one key are therefore handed out in
// publish order, by one consumer at a time, and Consume's per-key dispatch
// keeps that order with concurrent handlers (a failed message is retried in
// place while its key waits). The costs:
//
//   - at most shards subscribers of a group work at once (with the default
//     shards=1, one: the others stand by and take over). Choose shards when
//     the topic is created; it cannot change afterwards;
//   - a consumer that dies holds its shards until its lease expires, up to
//     the ack timeout, and their messages wait that long;
//   - only a shard's owner claims on it: a delivery its owner leaves
//     unsettled (a slow or stuck handler) is not redelivered while the
//     owner keeps its lease;
//   - a consumer that stalls longer than the ack timeout (a GC pause, a lost
//     connection) loses its leases; deliveries it already handed out may
//     then be handled twice and out of order;
//   - a raw Nack lets the key's later messages go first (Consume does not
//     nack under PerKey until MaxAttempts: it retries in place).
//
// Every subscriber of a group must ask for the same ordering: the first one
// records it in the topic's meta hash, and a subscriber asking for another
// is refused with an Unsupported error (an unordered subscriber reads every
// shard, which would break the order of the others).
//
// # Scheduled delivery
//
// A message published with Message.DeliverAt in the future (there is no
// upper bound: Capabilities.MaxDelay is 0) is not added to the stream at
// once: Publish stores its entry in the topic's schedule ({P+T}:qk:sched
// and {P+T}:qk:schedmsg), due at the server's time plus the delay left
// (rounded up to a millisecond), and returns. The topic's subscribers, of
// any group, add due entries to the stream of their key's shard at each
// claim interval (and when one falls due before the next), each exactly
// once (a Lua script moves it), so a scheduled message is never early and
// is late by up to the claim interval (1s with the defaults); while no
// subscriber of the topic runs, it waits. It then gets a new entry ID and
// Attempt 1, and is delivered when due, not in its key's publish order.
// Backlog counts scheduled messages as Delayed.
//
// # Backlog
//
// Backlog reports a group's lag (XINFO GROUPS), its pending entries not
// waiting for a nack delay, its delayed entries and its consumers, per shard
// in Parts when there are several. The queuekit command's lag command reads
// it.
package redisstreams
