// Package pubsub is queuekit's adapter for Google Cloud Pub/Sub, built on
// cloud.google.com/go/pubsub/v2. Import it for its side effect to make the
// gcppubsub:// scheme available to broker.Open, or wrap a *pubsub.Client you
// configured yourself with New and broker.New:
//
//	import _ "github.com/queuekit/queuekit/adapters/pubsub"
//	b, err := broker.Open(ctx, "gcppubsub://my-project")
//
//	import qpubsub "github.com/queuekit/queuekit/adapters/pubsub"
//	d, err := qpubsub.New(client, qpubsub.Options{})
//	b := broker.New(d)
//
// broker.Broker.As reaches the *pubsub.Client (and the adapter's *Broker,
// for its admin methods); broker.Subscriber.As the *pubsub.Subscriber.
//
// # Topology
//
// A queuekit topic is a Pub/Sub topic. A group is a subscription, named
// "<topic>-<group>" by default (Options.SubscriptionName): subscribers of
// one group compete for its messages, and every subscription gets every
// message published after it was created. Broker.Declare(topic, groups...)
// creates the topic and the groups' subscriptions; NewSubscriber creates
// its own. Both create only what is absent, and nothing with create=false
// (a missing topic or subscription is then a NotFound error).
//
// Pub/Sub accepts a message on a topic without subscriptions and drops it.
// queuekit refuses it instead: Publish to a topic that has no subscription
// fails with an error matching broker.ErrNoGroup (kind NotFound) before
// anything is sent, and so does Publish to a topic that does not exist
// (Publish never creates a topic). The check is one ListTopicSubscriptions
// request per topic and publisher, until it finds a subscription; it needs
// the pubsub.topics.listSubscriptions permission, and fails with a
// Permanent error saying so without it.
//
// Topic and subscription IDs are checked before any request against
// Pub/Sub's rules (3 to 255 characters, a letter first, then letters,
// digits and - _ . ~ + %, not starting with "goog"); topics may also be
// given as full names (projects/P/topics/T). A group may hold the same
// characters; a subscription ID over 255 characters is shortened with a
// hash. Breaking a rule is an InvalidArgument error.
//
// # Delivery semantics
//
//   - Publish goes through the client's batching publisher and returns once
//     Pub/Sub has accepted every message (each publish result awaited).
//     Messages that failed are listed in a *broker.PublishError.
//   - Message.ID and PublishedAt travel as the queuekit-id and
//     queuekit-published-at attributes, headers as the other attributes.
//     Pub/Sub allows 100 attributes (queuekit uses two or three of them),
//     256-byte names and 1024-byte values; a message over those limits, or
//     over MaxMessageSize (10 MB less 4 KiB), is refused before any publish
//     request (errors.Is(err, broker.ErrTooLarge) for size). A message from
//     another publisher keeps its queuekit-id attribute as its ID (or gets
//     the Pub/Sub message ID); an attribute named queuekit-attempt is
//     dropped: Attempt never comes from an attribute.
//   - Ordering (on by default): Message.Key is the ordering key, and the
//     subscriptions the adapter creates have message ordering enabled, so
//     messages of one key are delivered in publish order, one at a time.
//     SubscriberOptions.Ordering PerKey needs both: with ordering=false, or
//     on a subscription that exists without message ordering (which
//     Pub/Sub cannot enable later), NewSubscriber refuses with an
//     Unsupported error. When a publish of a key fails, the client pauses
//     that key; Publish resumes it after reporting the failure, so
//     publishing again works. With ordering=false the key travels as the
//     queuekit-key attribute. Pub/Sub keeps the order of a key among
//     messages published in one region: publishers that must not lose it
//     use a regional endpoint (New with
//     option.WithEndpoint("REGION-pubsub.googleapis.com:443")).
//   - Receive is the client's streaming pull. Each delivery keeps its
//     flow-control slot until it is settled, so MaxOutstandingMessages
//     (SubscriberOptions.Prefetch, default 1000) and MaxOutstandingBytes
//     bound what a subscriber holds: that is the backpressure. Leases are
//     extended by the client while a delivery is held (up to max_extension,
//     60 minutes by default).
//   - Ack settles the message. Without exactly-once delivery the client
//     sends acks in batches every 100ms, and an ack still queued when the
//     process dies is lost: the message is redelivered although it was
//     handled. On a subscription with exactly-once delivery, Ack returns
//     only once Pub/Sub has recorded it (or with an error: the message will
//     be redelivered), and a recorded ack is never followed by a
//     redelivery.
//   - AtMostOnce (SubscriberOptions.Guarantee) needs that: NewSubscriber
//     enables exactly-once delivery on the group's subscription, creating
//     it so or updating an existing one (every subscriber of the group then
//     gets it). With create=false on a subscription without it,
//     NewSubscriber refuses with an Unsupported error. Each Ack then waits
//     for the next ack batch and Pub/Sub's answer (about 100ms on pstest):
//     run Consume with enough Concurrency. exactly_once=true gives every
//     subscription the adapter makes or uses exactly-once delivery.
//   - Nack(0) makes Pub/Sub redeliver at once (after the subscription's
//     RetryPolicy backoff, if retry_min_backoff is set). Nack(delay) keeps
//     the message leased — the client goes on extending its ack deadline,
//     so Pub/Sub hands it to nobody — and nacks it when delay has passed.
//     This is chosen over the alternatives because it is exact per message
//     and works on every server: the streaming client does not expose ack
//     IDs (so one ModifyAckDeadline(delay) call is not possible without
//     taking over lease management), and a RetryPolicy is one backoff per
//     subscription, not per Nack, and is not implemented by pstest. The cost
//     is that a delayed delivery keeps its flow-control slot (and, with
//     ordering, its key's turn), that a delay is cut to what is left of
//     max_extension, and that Close cuts the delay short (the message is
//     nacked so another consumer can take it).
//   - SubscriberOptions.AckTimeout (default ack_deadline, 10 s) sets the ack
//     deadline of created subscriptions (10 s at least) and the length of
//     each lease extension, so the messages of a consumer that died come
//     back after about AckTimeout.
//   - Close nacks every delivery not settled yet, waits for the client to
//     send the last acks and nacks, and closes the stream. Pub/Sub
//     redelivers the nacked messages at once, except one the server pushed
//     into the closing stream meanwhile: that one comes back when its lease
//     (AckTimeout) runs out. The SDK's other shutdown mode, which closes the
//     stream first, is not used because it returns before the last acks
//     are sent, and an ack that returned nil must not be lost. Close waits
//     no longer than its ctx: when ctx ends first, it returns an error of
//     kind Canceled naming the subscription and the client finishes in the
//     background. (An ack the client never sends only makes Pub/Sub
//     redeliver that message.) Ack after Close returns a Closed error: the
//     delivery was given back.
//   - Message.Attempt is Pub/Sub's DeliveryAttempt, which Pub/Sub reports
//     only on subscriptions with a dead-letter policy. Without one, the
//     Broker counts the deliveries its subscribers get of each message (a
//     lower bound when other processes share the subscription; it starts
//     again at 1 in a new process).
//   - SubscriberOptions.MaxAttempts > 0 gives the subscription a
//     DeadLetterPolicy to DeadLetterTopic (default "<topic>.dlq"), created
//     along with a subscription of the same group on it, so that no dead
//     letter is dropped. Pub/Sub accepts 5 to 100 attempts, and its service
//     agent needs the publisher role on the dead-letter topic and the
//     subscriber role on the subscription. The pstest emulator accepts any
//     count, but dead-letters by acking the message by its message ID,
//     which matches none of its ack IDs: it forwards the message again and
//     again and, on an ordered subscription, never delivers the next
//     message of its key. The test server of this module
//     (internal/testenv/pstestserver) forwards a message nacked on its last
//     attempt once, as the real service does.
//   - Pub/Sub's API offers no backlog count (Cloud Monitoring's
//     subscription/num_undelivered_messages has it), so there is none here.
//
// # URL
//
//	gcppubsub://PROJECT?param=value&...
//
// PROJECT is the Google Cloud project ID. Credentials come from Application
// Default Credentials, or none with an emulator (emulator= or the
// PUBSUB_EMULATOR_HOST environment variable, which the client honours
// itself). Open makes one request (GetTopic) to fail fast when the service
// cannot be reached. Parameters, all optional; any other, or a value out of
// its range, is an InvalidArgument error:
//
//	emulator                  host:port of a Pub/Sub emulator (plaintext, no credentials; port 1..65535)
//	dial_timeout              bound on Open's reachability check (default 10s; > 0)
//	ordering                  use Message.Key as the ordering key, subscriptions with message ordering (default true)
//	create                    create missing topics and subscriptions, update settings (default true)
//	exactly_once              exactly-once delivery on every subscription; Ack waits for confirmation (default false)
//	subscription              one existing subscription ID (or full name) for every subscriber, whatever the group
//	ack_deadline              ack deadline of created subscriptions when AckTimeout is 0 (default 10s; 10s..600s)
//	max_extension             how long a held delivery's lease is extended (default 60m; >= 0)
//	max_outstanding_messages  deliveries held unsettled per subscriber (default 1000; 0..2^31-1; Prefetch overrides)
//	max_outstanding_bytes     their bytes (default 1e9; >= 0)
//	streams                   StreamingPull streams per subscriber (default 1; 0..256)
//	batch_delay               publisher batching delay (default 1ms, not the SDK's 10ms: Publish waits for it; >= 0)
//	batch_count               messages per publish request (default 100; 0..1000)
//	batch_bytes               bytes per publish request (default 1e6; 0..1e7)
//	retry_min_backoff         RetryPolicy minimum backoff of created subscriptions (default none; 0..600s)
//	retry_max_backoff         RetryPolicy maximum backoff (default none, Pub/Sub's 600s when only the minimum is set; 0..600s, >= the minimum)
//	max_message_size          lower size limit for servers that take less than 10 MB (pstest: 4 MiB per request; 0..9995904)
//
// A 0 stands for the default where one is listed.
package pubsub
