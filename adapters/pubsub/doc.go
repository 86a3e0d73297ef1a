// Package pubsub is queuekit's adapter for Google Cloud Pub/Sub, built on
// cloud.google.com/go/pubsub/v2. Import it for its side effect to make the
// gcppubsub:// scheme available to broker.Open, or call New with a
// *pubsub.Client you configured yourself:
//
//	import _ "github.com/queuekit/queuekit/adapters/pubsub"
//	b, err := broker.Open(ctx, "gcppubsub://my-project")
//
//	import qpubsub "github.com/queuekit/queuekit/adapters/pubsub"
//	b, err := qpubsub.New(client, qpubsub.Options{})
//
// # Model
//
// A queuekit topic is a Pub/Sub topic. A subscriber group is a subscription,
// named "<topic>-<group>" by default (Options.SubscriptionName): subscribers
// of one group compete for its messages, and every subscription gets every
// message published after it was created. Topics and subscriptions are
// created when absent unless create=false.
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
//     over MaxMessageSize (10 MB less 4 KiB), is refused before any request
//     (errors.Is(err, broker.ErrTooLarge) for size).
//   - Ordering (on by default): Message.Key is the ordering key, and the
//     subscriptions the adapter creates have message ordering enabled, so
//     messages of one key are delivered in publish order, one at a time.
//     When a publish of a key fails, the client pauses that key; Publish
//     resumes it after reporting the failure, so publishing again works.
//     With ordering=false the key travels as the queuekit-key attribute.
//     Pub/Sub keeps the order of a key among messages published in one
//     region: publishers that must not lose it use a regional endpoint
//     (New with option.WithEndpoint("REGION-pubsub.googleapis.com:443")).
//     Ordering cannot be enabled on a subscription that exists without it;
//     SubscriberOptions.Ordering = PerKey on such a one is an error.
//   - Receive is the client's streaming pull. Each delivery keeps its
//     flow-control slot until it is settled, so MaxOutstandingMessages
//     (SubscriberOptions.Prefetch, default 1000) and MaxOutstandingBytes
//     bound what a subscriber holds: that is the backpressure. Leases are
//     extended by the client while a delivery is held (up to max_extension,
//     60 minutes by default).
//   - Ack settles the message. With exactly_once=true the subscriptions get
//     exactly-once delivery and Ack returns only once Pub/Sub confirmed it,
//     which is what at-most-once consumers want: without it an ack is sent
//     within 100 ms, and lost if the process dies in that window.
//   - Nack(0) makes Pub/Sub redeliver at once (after the subscription's
//     RetryPolicy backoff, if retry_min_backoff is set). Nack(delay) keeps
//     the message leased — the client goes on extending its ack deadline,
//     so Pub/Sub hands it to nobody — and nacks it when delay has passed.
//     This is chosen over the alternatives because it is exact per message
//     and works on every server: the streaming client does not expose ack
//     IDs (so one ModifyAckDeadline(delay) call is not possible without
//     taking over lease management), and a RetryPolicy is one backoff per
//     subscription, not per Nack, and is not implemented by pstest. The cost
//     is that a delayed delivery keeps its flow-control slot, that a delay
//     is cut to what is left of max_extension, and that Close cuts the
//     delay short (the message is nacked so another consumer can take it).
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
//     no longer than its ctx: when ctx ends first, it returns a Transient
//     error naming the subscription, the client finishes in the background,
//     and calling Close again waits for it. (An ack the client never sends
//     only makes Pub/Sub redeliver that message.)
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
//     count but keeps forwarding a dead letter again and again, until the
//     subscription is deleted: consumers of its dead-letter topic see
//     duplicates (same queuekit-id) that reuse one ack ID, which can stall
//     their Close until ctx ends (the client loses track of a copy that
//     arrives while its nack of the one before is pending).
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
// cannot be reached. Parameters, all optional; any other is an error:
//
//	emulator                  host:port of a Pub/Sub emulator (plaintext, no credentials)
//	dial_timeout              bound on Open's reachability check (default 10s)
//	ordering                  use Message.Key as the ordering key (default true)
//	create                    create missing topics and subscriptions (default true)
//	exactly_once              create subscriptions with exactly-once delivery; Ack waits for confirmation (default false)
//	subscription              one existing subscription ID for every subscriber, whatever the group
//	ack_deadline              ack deadline of created subscriptions when AckTimeout is 0 (default 10s, 10s..600s)
//	max_extension             how long a held delivery's lease is extended (default 60m)
//	max_outstanding_messages  deliveries held unsettled per subscriber (default 1000; Prefetch overrides)
//	max_outstanding_bytes     their bytes (default 1e9)
//	streams                   StreamingPull streams per subscriber (default 1)
//	batch_delay               publisher batching delay (default 10ms)
//	batch_count               messages per publish request (default 100, at most 1000)
//	batch_bytes               bytes per publish request (default 1e6)
//	retry_min_backoff         RetryPolicy minimum backoff of created subscriptions (default none)
//	retry_max_backoff         RetryPolicy maximum backoff (default none; Pub/Sub's default 600s when only the minimum is set)
//	max_message_size          lower size limit for servers that take less than 10 MB (pstest: 4 MiB per request)
package pubsub
