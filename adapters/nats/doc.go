// Package nats is queuekit's NATS JetStream adapter, URL scheme nats://, on
// github.com/nats-io/nats.go and its jetstream package.
//
//	import _ "github.com/queuekit/queuekit/adapters/nats"
//
//	b, err := broker.Open(ctx, "nats://127.0.0.1:4222?ack_wait=30s")
//
// or, typed, over a connection of your own (New leaves it open on Close):
//
//	nc, _ := nats.Connect(url, nats.UserCredentials("app.creds"))
//	nb, err := natsadapter.New(nc, natsadapter.Options{})
//	b := broker.New(nb)
//
// # Topology
//
// A topic is a NATS subject: Publish sends to the subject named like the
// topic, so any NATS client can publish to a queuekit topic and read from
// it. Messages are kept by the JetStream stream that captures the subject:
// one of the account's own streams (found with the stream-by-subject
// lookup), or else a stream the adapter creates for the topic alone, named
// StreamName(topic) — the topic with '.' made '_' — with the storage,
// replicas, retention and max age of the URL.
//
// A group is a durable pull consumer of that stream, named like the group
// and filtered on the topic's subject, with explicit acks. Subscribers of
// one group share its messages; each group receives every message. Declare
// creates the stream and the groups; NewSubscriber creates what is missing.
// Settings that are the group's, not the subscriber's: the ack wait (the
// last subscriber that gives SubscriberOptions.AckTimeout sets it) and per-
// key order (see below). A consumer made outside queuekit is used when it
// can serve (a pull consumer with explicit acks whose filter matches the
// topic) and refused otherwise.
//
// The rule: a group receives at least every message published after it
// was declared. At least: JetStream keeps messages in the stream, and a new
// group starts at the stream's first message (deliver policy all), so with
// Limits retention (the default) a group declared later also receives the
// older messages the stream still keeps. With retention=interest the
// stream lets a message go once every group that existed when it was
// published acked it, and a later group receives only what is still kept.
//
// Publishing to a topic that no stream captures, or whose stream has no
// durable consumer whose filter matches the subject, fails with an error
// matching driver.ErrNoGroup (Broker implements driver.GroupChecker,
// which package broker asks once per topic and publisher). Dead letters
// are published by the adapter itself and are kept by the dead-letter
// topic's stream (Limits retention always) until a group reads them.
//
// Names are checked before any I/O (InvalidArgument): a topic is a
// subject of printable ASCII tokens separated by single dots, without
// wildcards ('*', '>'), '/' or '\', not starting with '$'; a group is
// printable ASCII without '.', '*', '>', '/' or '\'; both at most 255
// bytes. Two topics that differ only by '.' and '_' map to one stream
// name: the second is refused.
//
// # Delivery semantics
//
// Publish sends asynchronously (at most publish_window messages per
// publisher awaiting their ack) and returns nil only once JetStream
// acknowledged every message: it is stored (on file by default) in its
// stream. A message whose ack has not come publish_timeout after the call
// began (waiting for room included), or whose connection dropped before
// the ack, is reported failed in a *driver.PublishError (Transient): it
// may or may not be stored, so a retry may duplicate it. The message ID is not used for JetStream's
// de-duplication (Nats-Msg-Id): a dead letter redriven to its topic keeps
// its ID and must not be dropped as a duplicate. A user header named
// Nats-Msg-Id (or any Nats-* header) is passed to JetStream as it is.
//
// At-least-once (the default): a subscriber pulls continuously, prefetch
// messages per pull, with a pull loop of its own that works like
// jetstream's Consume (whose refill check can be skipped for the last
// messages of a pull, which left a busy subscriber idle until two missed
// heartbeats, 15s by default: see pull.go). Ack sends an ack and
// does not wait for the server's reply; a lost ack means a redelivery.
// A delivery not settled within the group's ack wait is redelivered by
// JetStream — this is what a crashed consumer looks like. Nack(delay) is
// NakWithDelay (Nak at once for 0). Message.Attempt is JetStream's delivery
// count. Subscriber.Close nacks the messages pulled and not handed out, so
// they come back at once (nats-server 2.9 may first hand the odd one to the
// closed subscriber's pull request, which it has not dropped yet: that one
// comes back after the ack wait); deliveries handed out and not settled
// come back after the ack wait.
//
// At-most-once (SubscriberOptions.Guarantee AtMostOnce): the subscriber
// pulls a batch at a time (Fetch) and notes when it sent each pull; the
// server delivered the batch after that, so it cannot redeliver any of it
// before that time plus the ack wait. Ack sends the ack as a request and
// returns nil only when the server's reply came before that instant: the
// ack was recorded before any copy could go to another subscriber, so a
// message whose Ack returned nil is not delivered again, even when its
// subscriber crashes right after. Otherwise Ack fails (Transient) and
// broker.Consume does not handle the message. (The instant matters because
// a JetStream consumer takes an ack from an earlier delivery even after it
// redelivered the message.) Deliveries that waited in the subscriber past
// that instant are not handed out and come back with Attempt one higher,
// so an at-most-once subscriber pulls no more than it has room for, and at
// most AtMostOncePrefetch (16) at a time unless SubscriberOptions.Prefetch
// says otherwise. The price is one round trip per Ack. A message pulled
// and not acked when its subscriber dies comes back to another subscriber
// after the ack wait; a message whose Ack failed may be lost, as
// at-most-once allows.
//
// Dead letters: with SubscriberOptions.MaxAttempts > 0 the adapter moves a
// message to SubscriberOptions.DeadLetterTopic (default "<topic>.dlq") when
// delivery MaxAttempts is nacked, and when delivery MaxAttempts+1 arrives
// (the last attempt timed out): it publishes a copy with the same ID, key,
// payload and headers plus queuekit-dead-reason, queuekit-dead-attempts and
// queuekit-original-topic, waits for JetStream's ack, then terminates the
// message (+TERM) so that its stream never redelivers it. The consumer's
// MaxDeliver stays unlimited: JetStream's own limit would stop delivering
// a message without moving it anywhere (it only emits an advisory that
// nobody may be listening to), and a dead-letter publish that failed could
// never be tried again. A crash between the two steps leaves a second copy
// in the dead-letter topic.
//
// # Server versions
//
// Tested against nats-server 2.9.10. That server, when a nacked or timed-out
// message is due while a pull request whose client is gone (crashed, or
// unsubscribed) is still standing, delivers the message to that request —
// where it waits for the ack wait — and delivers the stream's last
// delivered message again as new, even when it was acked (measured: a
// message confirmed by a synchronous ack came back). The adapter keeps
// such requests from standing where it can: Subscriber.Close has the
// server sweep its pull requests (a consumer info does that) before it
// nacks what it gives back, at-most-once pull requests expire within a
// quarter of the ack wait, and at-least-once ones within half the ack wait
// (but not sooner than 5s: a request that expires just as a redelivery is
// due trips the same bug — measured in 6 of 30 runs with 1s requests). A
// message can still come back a second time with Attempt 1 (a duplicate,
// never a loss) after a subscriber crash when the ack wait is under 10s,
// or in a group shared with clients that leave long pull requests behind. The at-most-once pattern (short fetches, synchronous acks) showed
// no acked message delivered again (15 runs of 3s with redeliveries due
// all along), nor did the conformance suite's at-most-once properties;
// check your server's release notes for the fix.
//
// # Throughput defaults
//
// bench_test.go pairs the adapter on its defaults with nats.go written
// carefully by hand; nats-server (2.9.10, file storage) is the bottleneck
// there. A publisher keeps up to publish_window (4096) messages awaiting
// their ack, across its Publish calls, as the raw baseline does (nats.go's
// own default is 4000). With 1024 four callers of 512 messages could not
// all have their batch in flight, and in alternating runs of
// BenchmarkNATSPublish the adapter measured 0.82× the raw client
// (payload-only; 0.87× sending the same bytes) against 0.91× (0.98×) with
// 4096. The window holds no copy: the messages in it belong to Publish
// calls still waiting, so it costs no memory they do not already hold.
// The acks come to an inbox of the publisher's own rather than through
// jetstream's PublishMsgAsync, which keeps a future, a reply-token string
// and a map entry per message and decodes every ack as JSON; the adapter
// tells an ack by its first bytes and decodes only failures. That took the
// client from 16.1 to 6.1 allocations and from 6.6–7.0 to 4.8–5.5 µs of
// CPU per message (2026-12-07, BenchmarkNATSPublish in three alternating
// pairs: 0.89–0.94× the payload-only raw client before, 1.02–1.09×
// after). The rest is what PublishMsgAsync does: a "no responders" reply
// is sent again twice, 250 ms apart, and the messages awaiting their ack
// fail (Transient) as soon as the connection drops, since their acks
// cannot come. A subscriber pulls prefetch (1000) messages at a time, refilled at half as
// nats.go does, as the raw baseline does (nats.go's own default is 500),
// and acks each message. The server's CPU per message follows the pull
// size, not the client: 512 took about 9% less server CPU per message than
// 256 (fewer pull requests), and on a nats-server of its own the
// hand-written consumer pulling 512 cost the server as much as the adapter
// at 512, and at 1000 both 250-500ns a message less. In eight alternating
// runs of BenchmarkNATSConsume (2026-12-06) the adapter consumed at 0.85–0.89×
// the raw client pulling 1000 with a prefetch of 512, and at 0.88–1.02×
// (median 0.93×) with 1000. A group's max_ack_pending (2000) leaves room
// for two subscribers' full pulls, so that a second subscriber is not kept
// waiting for the first's acks. Acks stay per message: an AckAll ack would also
// ack what other subscribers of the group still hold (a single in-order
// consumer acking every 500th message needs about a third less server CPU:
// BenchmarkNATSConsumeAckAll).
//
// # Per-key order
//
// JetStream delivers a consumer's messages in stream order but hands
// several out at once, so a redelivery (after a nack, an ack timeout or a
// crash) would come after later messages of its key. SubscriberOptions.
// Ordering PerKey sets the group's max ack pending to 1: the group has one
// message in flight at a time, a nacked or timed-out message is
// redelivered before anything after it, and order holds per key — in fact
// over the whole group — across competing subscribers, nacks and crashes.
// broker.Consume then dispatches per key. What it costs: a PerKey group
// handles one message per round trip (deliver, handle, ack), whatever its
// concurrency and number of subscribers; keys do not run in parallel. (A
// subject per key with a consumer each would, at one consumer per key.) A
// group once subscribed with PerKey keeps max ack pending 1 for every later
// subscriber (stronger than asked is allowed); delete the group to undo it.
//
// # Messages
//
// The payload is the NATS message body, byte for byte. Headers are NATS
// headers, as they are when NATS can carry them: the ID travels in
// queuekit-id, the key in queuekit-key, PublishedAt is the time JetStream
// stored the message (the delivery's metadata timestamp). Names or values
// NATS would change (CR or LF, leading or trailing blanks, names outside
// printable ASCII or with one of "():;,/<=>?@[\]{}, the names Status and
// Description) are packed, lossless, into the queuekit-headers header. A
// header named queuekit-key or queuekit-headers is refused by Publish. A
// message another client published without queuekit-id gets its
// Nats-Msg-Id header as ID, or else "<stream>:<sequence>"; Attempt and
// PublishedAt never come from a header. The largest message is the
// server's max_payload (1 MiB by default) less HeaderReserve by
// Message.Size; Publish refuses with driver.ErrTooLarge, before sending
// anything of the call, a message whose encoded size exceeds max_payload.
//
// # URL parameters
//
//	nats://[user:password@|token@]host[:port][?params]   (default 127.0.0.1:4222)
//
//	ack_wait         ack wait of groups whose subscribers set no AckTimeout (default 30s; 1ms..24h)
//	max_ack_pending  unsettled deliveries of an unordered group, all subscribers together (default 2000; 1..1048576)
//	prefetch         messages a subscriber pulls at a time without SubscriberOptions.Prefetch (default 1000; 1..65536)
//	publish_window   messages a publisher has awaiting JetStream's ack (default 4096; 1..65536)
//	publish_timeout  how long a Publish call waits for its acks (default 30s; 1ms..1h)
//	storage          file or memory: storage of the streams the adapter creates (default file)
//	replicas         replicas of the streams the adapter creates (default 1; 1..5)
//	retention        limits or interest: retention of the topic streams the adapter creates (default limits)
//	max_age          drop messages older than this from the streams the adapter creates (default 0: keep; else >= 100ms)
//	domain           JetStream domain (default: the account's own)
//	connect_timeout  dial timeout (default 5s; up to 5m)
//	reconnect_wait   pause between reconnect attempts (default 250ms; 1ms..1m); reconnection never gives up
//	name             connection name shown by the server (default queuekit)
//	tls              true: require TLS (implied by tls_ca and tls_cert)
//	tls_ca           file of CA certificates to verify the server with
//	tls_cert         client certificate file (with tls_key)
//	tls_key          client key file (with tls_cert)
//	creds            credentials file (user JWT and NKey seed, as nsc writes)
//	jwt              user JWT file, with nkey its seed file
//	nkey             NKey seed file (alone: NKey authentication)
//
// A user and password, or a token, go in the URL's user part; creds, jwt
// and nkey name files and exclude it. Unknown parameters and values out of
// range are InvalidArgument errors that list the valid ones; credentials
// and the values of creds, jwt and nkey never appear in errors.
//
// # Escape hatches
//
// Broker.As gives the *nats.Conn and the jetstream.JetStream; a
// subscriber's As gives its jetstream.Consumer. Backlog reports a group's
// pending and in-flight messages from its consumer info. DeleteTopic and
// DeleteGroup remove what the adapter created.
package nats
