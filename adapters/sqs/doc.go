// Package sqs is queuekit's adapter for Amazon SQS, with Amazon SNS for
// fan-out, on aws-sdk-go-v2. Importing it registers the sqs:// scheme
// (broker.Open); New takes an *sqs.Client (and an *sns.Client in
// Options.SNS) that the caller configured, and broker.New wraps it.
//
// # Topics, groups and queues
//
// In queue mode (the default) a topic is one SQS queue, named by
// QueueName(topic) or given as a queue URL, and that queue is the topic's
// only group: every subscriber competes for its messages whatever
// SubscriberOptions.Group says, and a group name given to Declare or
// NewSubscriber names nothing of its own. There is no fan-out. In fan-out
// mode (?fanout=true, or Options.SNS set) a topic is an SNS topic and each
// group reads its own queue, GroupQueueName(topic, group), subscribed to
// the topic with raw message delivery, so every group gets every message
// with its attributes. Names are made valid for SQS and SNS: characters
// other than letters, digits, '-' and '_' become '_'.
//
// Declare and NewSubscriber create what is missing — the queue, and in
// fan-out mode the SNS topic, the group's queue and its subscription —
// unless the broker was opened with create=false; Publish never creates
// anything. The rule of every queuekit broker holds: a group receives every
// message published after it was declared (by Declare or NewSubscriber),
// and a Publish that no group would receive is refused with an error
// matching broker.ErrNoGroup (kind NotFound) rather than lost. In queue
// mode that is a Publish to a queue that does not exist; in fan-out mode,
// to an SNS topic that does not exist or has no subscription (SNS would
// drop the message), which the broker checks once per topic and publisher
// with ListSubscriptionsByTopic (HasGroup).
//
// With ?fifo=true (Options.FIFO) every queue and SNS topic is FIFO: the
// message key is the MessageGroupId (keyless messages use their ID, so they
// do not queue behind one another) and the message ID is the
// MessageDeduplicationId, so messages of one key are delivered in publish
// order, one group at a time, and a republished ID within five minutes is
// dropped by SQS. Standard queues keep no order: a subscriber asking for
// SubscriberOptions.Ordering PerKey without fifo=true is refused with an
// Unsupported error naming fifo=true.
//
// # Delivery semantics
//
// Publish returns nil once SQS (or SNS) accepted every message: it sends
// through SendMessageBatch (SNS PublishBatch), gathering the messages of
// concurrent Publish calls to one topic into batches of up to 10 entries
// and 256 KiB, and reports refused entries in a *broker.PublishError.
// A message over Options.MaxMessageSize by broker.Message.Size (default
// 256 KiB; 190 KiB in fan-out mode, where SNS takes 256 KiB on the wire and
// a binary payload travels base64-encoded) is refused with a
// *broker.TooLargeError before any request. Queues the adapter creates
// accept 1 MiB on the wire; a queue created elsewhere with the old 256 KiB
// limit refuses binary payloads over about 190 KiB entry by entry.
//
// Subscribers long-poll with several pollers: two, and up to ?pollers
// while the queue has a backlog. A received message is invisible to other
// consumers for the visibility timeout (SubscriberOptions.AckTimeout, else ?visibility_timeout), which the
// subscriber extends for as long as the delivery stays unsettled (up to
// ?max_extension); a consumer that dies stops extending, and SQS delivers
// the message again. Ack deletes the message through DeleteMessageBatch;
// Nack(delay) makes it visible again after delay in whole seconds
// (ChangeMessageVisibilityBatch). Message.Attempt is the
// ApproximateReceiveCount.
//
// SubscriberOptions.Guarantee AtLeastOnce acks after the handler succeeded
// (duplicates are possible, loss is not), and Ack only queues the delete:
// it returns at once, and the subscriber sends the queued deletes in
// batches of up to 10, up to 16 requests at a time, each partial batch
// waiting at most 1ms for more. Acks are queued because a handler that
// waited for its delete would cost a round trip per message: with
// broker.Consume's default of one handler at a time, about 500 msg/s on a
// local emulator against 10,000 for batched deletes, and far less against
// SQS. It costs no durability: a delete that fails (it is neither retried
// nor reported, nobody waits for it) or is lost with the process only
// brings its message back after the visibility timeout, as a duplicate.
// Close waits for the deletes queued before it (no longer than its ctx),
// so what was acked is gone from the queue when Close returns. A delivery
// keeps its prefetch slot until its delete is answered, so that Prefetch
// bounds the deletes under way too.
//
// Under AtMostOnce the consumer acks before handling, and Ack returns nil only once DeleteMessageBatch
// deleted the message — sent at once, not held back for other acks — so a
// crash after Ack never brings it back. SQS accepts a delete made with the
// receipt of an earlier receive without deleting anything, so under
// AtMostOnce the delete must be answered while the message is still
// invisible: an Ack fails (and the message is not handled, but delivered
// again later) when the visibility timeout may have ended already (its
// extension failed, or it was held past max_extension) or ends before SQS
// answers. A message received but not yet handed out (prefetched) comes
// back after a crash too; it was never handled.
//
// Subscriber.Close lets the long polls in flight end rather than abandon
// them, because SQS hands messages to abandoned polls too, and those would
// stay hidden for a visibility timeout and count as a receive towards
// MaxAttempts; it then makes the messages it received but never handed
// out visible again. It waits up to wait_time (5s by default) for that,
// no longer than its ctx: when ctx ends first, the polls are abandoned — a
// delay for what they receive, never a loss.
//
// With SubscriberOptions.MaxAttempts > 0 a message is dead-lettered after
// that many deliveries. In queue mode the queue gets a RedrivePolicy with
// that maxReceiveCount, and SQS itself moves the message to the queue of
// opts.DeadLetterTopic, which any subscriber of that topic reads. In
// fan-out mode a RedrivePolicy cannot reach every group subscribed to the
// dead-letter SNS topic, so the subscriber publishes a message that SQS
// hands it for the (MaxAttempts+1)th time to that topic, with the
// queuekit-original-topic, -dead-attempts and -dead-reason headers, and
// deletes it; the RedrivePolicy (three receives later) catches what it
// failed to forward, and what it would not forward because no group is
// subscribed to the dead-letter topic (see DeadLetterQueue).
//
// Redrive (and the queuekit redrive command, which works on any broker)
// moves dead letters back to their queue with their body, ID, key and
// headers; both drop the dead-letter headers, give the message a new
// queuekit-published-at (the time of the redrive, not of the first
// publish) and count the redrives in the queuekit-redrives header. Redrive
// retries transient failures and says how many messages it left in the
// dead-letter queue, visible or in flight. Broker.Backlog (queuekit lag),
// QueueDepth and Depth report a queue's visible, in-flight and delayed
// counts.
//
// # Messages on the wire
//
// The payload is the message body when it is valid SQS text, and otherwise
// its base64 encoding with attribute queuekit-encoding=base64 (an empty
// payload is "-" with queuekit-encoding=empty), so payloads are binary-safe.
// ID, PublishedAt and Key travel as the attributes queuekit-id,
// queuekit-published-at and queuekit-key; headers are attributes of their
// own, except that SQS allows 10 attributes per message, so headers that do
// not fit (or whose name SQS does not allow, or whose value is empty) are
// packed into one attribute, queuekit-headers. Messages from other
// producers are received with the SQS MessageId as ID, the MessageGroupId
// as key and every attribute as a header.
//
// # URL
//
//	sqs://?region=eu-west-1&fanout=true&fifo=true
//	sqs://?endpoint=http://127.0.0.1:4566
//
// The URL has no host or path: queues are named by the topic, as a queue
// name or URL (an SNS topic name or ARN in fan-out mode). Parameters, all
// optional; an unknown one, or a value out of its range, is an
// InvalidArgument error. What each costs:
//
//	region              AWS region (letters, digits and '-'); default from the
//	                    environment (AWS_REGION, the shared config), us-east-1
//	                    with an endpoint
//	endpoint            http(s) base URL of an SQS/SNS endpoint, such as an
//	                    emulator, without credentials in it; with it the
//	                    credentials are static placeholders, without it the
//	                    default AWS credential chain is used
//	fifo                true: FIFO queues and topics, per-key order (false).
//	                    Costs: a key's messages are handled one at a time, SQS
//	                    FIFO throughput quotas and price apply, and an ID
//	                    republished within five minutes is dropped
//	fanout              true: SNS topics with a queue per group (false). Costs:
//	                    an SNS publish per message besides the SQS traffic of
//	                    every group, messages up to 190 KiB, a check of the
//	                    topic's subscriptions per topic and publisher
//	wait_time           long-poll time per receive, whole seconds 0s-20s (5s).
//	                    An idle subscriber makes one ReceiveMessage request
//	                    per poller per wait_time (with the defaults about a
//	                    million billed requests a month); shorter means more
//	                    empty receives, 0s short-polls (a request every 200ms
//	                    per idle poller, and SQS samples only some of its
//	                    servers). Longer makes Subscriber.Close wait longer
//	                    (up to wait_time) for the polls in flight
//	visibility_timeout  default visibility timeout, 1s-12h (30s): how soon a
//	                    crashed consumer's messages come back. The subscriber
//	                    extends unsettled deliveries every half timeout, so a
//	                    shorter one costs more ChangeMessageVisibility requests
//	                    for slow handlers; a longer one delays redelivery
//	max_messages        messages per receive, 1-10 (10); fewer means more
//	                    requests per message
//	pollers             most concurrent receives per subscriber, 1-64 (8).
//	                    Two poll always; the others join one at a time while
//	                    receives come back full (a backlog) and each leaves
//	                    after one that does not, so an idle subscriber makes
//	                    the requests of two. A poller brings at most 10
//	                    messages per round trip (10-20ms against SQS): more
//	                    pollers drain a backlog faster
//	max_extension       longest a delivery's visibility is extended, 1s-12h
//	                    (1h): a handler stuck longer loses its message to
//	                    redelivery (and under at-most-once cannot ack it)
//	max_message_size    largest message (broker.Message.Size) in bytes,
//	                    1-1048576 (262144), 1-262144 with fanout (194560).
//	                    SQS bills each 64 KiB of a message as a request
//	create              false: Declare and NewSubscriber never create queues,
//	                    topics or subscriptions, which must exist (true)
//
// A URL-opened broker turns the SDK's own retries off: errors carry a
// semantics.Kind and the caller (broker.Consume, the retry middleware,
// Redrive's bounded retry) decides. Credentials never appear in errors.
//
// # Scheduled delivery
//
// On standard queues (not FIFO, not SNS fan-out) a message with
// Message.DeliverAt is sent with DelaySeconds: the time left, rounded up to
// whole seconds (never early), up to 15 minutes (Capabilities.MaxDelay;
// package broker refuses longer delays). FIFO queues refuse per-message
// delays and an SNS publish has none: there, schedule through the outbox
// (outbox.AddAt), which holds the message until it is due on any broker.
package sqs
