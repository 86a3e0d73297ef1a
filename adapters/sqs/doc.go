// Package sqs is queuekit's adapter for Amazon SQS, with Amazon SNS for
// fan-out, on aws-sdk-go-v2. Importing it registers the sqs:// scheme;
// New takes an *sqs.Client (and an *sns.Client in Options.SNS) that the
// caller configured.
//
// # Topics, groups and queues
//
// In queue mode (the default) a topic is one SQS queue, named by
// QueueName(topic) or given as a queue URL, and every subscriber competes
// for its messages whatever its group: there is no fan-out. In fan-out mode
// (?fanout=true, or Options.SNS set) a topic is an SNS topic and each
// subscriber group reads its own queue, GroupQueueName(topic, group),
// subscribed to the topic with raw message delivery, so every group gets
// every message with its attributes. Names are made valid for SQS and SNS:
// characters other than letters, digits, '-' and '_' become '_'. Missing
// queues, topics and subscriptions are created unless ?create=false.
//
// With ?fifo=true (Options.FIFO) every queue and SNS topic is FIFO: the
// message key is the MessageGroupId (keyless messages use their ID, so they
// do not queue behind one another) and the message ID is the
// MessageDeduplicationId, so messages of one key are delivered in publish
// order, one group at a time, and a republished ID within five minutes is
// dropped by SQS. Standard queues keep no order.
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
// Subscribers long-poll with several pollers. A received message is
// invisible to other consumers for the visibility timeout
// (SubscriberOptions.AckTimeout, else ?visibility_timeout), which the
// subscriber extends for as long as the delivery stays unsettled (up to
// ?max_extension); a consumer that dies stops extending, and SQS delivers
// the message again. Ack deletes the message (DeleteMessageBatch, batched
// with concurrent acks); Nack(delay) makes it visible again after delay in
// whole seconds (ChangeMessageVisibilityBatch). Message.Attempt is the
// ApproximateReceiveCount. broker.Consume gives at-least-once (ack after
// the handler) or at-most-once (ack, that is delete, before the handler).
// Subscriber.Close lets the long polls in flight end rather than abandon
// them, because SQS hands messages to abandoned polls too, and those would
// stay hidden for a visibility timeout; it then makes the messages it
// received but never handed out visible again.
//
// With SubscriberOptions.MaxAttempts > 0 a message is dead-lettered after
// that many deliveries. In queue mode the queue gets a RedrivePolicy with
// that maxReceiveCount, and SQS itself moves the message to the queue of
// opts.DeadLetterTopic, which any subscriber of that topic reads. In
// fan-out mode a RedrivePolicy cannot reach every group subscribed to the
// dead-letter SNS topic, so the subscriber publishes a message that SQS
// hands it for the (MaxAttempts+1)th time to that topic, with the
// queuekit-original-topic, -dead-attempts and -dead-reason headers, and
// deletes it; the RedrivePolicy (three receives later) only catches what it
// failed to forward (see DeadLetterQueue). Subscribe a group to the
// dead-letter topic before messages can die: SNS drops what is published to
// a topic nobody subscribed to. Redrive moves dead letters back, body and
// attributes intact. QueueDepth and Depth report the visible, in-flight and
// delayed counts for lag metrics.
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
// optional; an unknown one is an error:
//
//	region              AWS region; default from the environment (AWS_REGION,
//	                    the shared config), us-east-1 with an endpoint
//	endpoint            base URL of an SQS/SNS endpoint, such as an emulator;
//	                    with it the credentials are static placeholders,
//	                    without it the default AWS credential chain is used
//	fifo                true: FIFO queues and topics, per-key order (false)
//	fanout              true: SNS topics with a queue per group (false)
//	wait_time           long-poll time per receive, 0s-20s (20s); Subscriber.Close
//	                    waits up to this long for the polls in flight
//	visibility_timeout  default visibility timeout (30s)
//	max_messages        messages per receive, 1-10 (10)
//	pollers             concurrent receives per subscriber (2)
//	max_extension       longest a delivery's visibility is extended (1h)
//	max_message_size    largest message (broker.Message.Size) in bytes, up to
//	                    1048576 (262144; 194560 with fanout)
//	create              false: never create queues, topics or subscriptions (true)
//
// A URL-opened broker turns the SDK's own retries off: errors carry a
// semantics.Kind and the caller (broker.Consume, the retry middleware)
// decides. Credentials never appear in errors.
package sqs
