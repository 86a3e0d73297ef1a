// Package memory is queuekit's embedded broker, URL scheme mem://. It lives
// inside the process, needs nothing installed and keeps every promise the
// conformance suite checks, so it is the default broker of the examples, the
// reference of the benchmarks, and a test double for users' own code (in the
// way net/http/httptest is).
//
//	import _ "github.com/queuekit/queuekit/adapters/memory"
//
//	b, err := broker.Open(ctx, "mem://?ack_timeout=5s")
//
// or, typed:
//
//	b := memory.New(memory.Options{AckTimeout: 5 * time.Second})
//
// # Instances
//
// Every Open of mem://NAME (NAME may be empty) in one process shares one
// broker until all of them are closed, so a producer and a consumer that
// open the same URL separately talk to each other. New always makes a
// private broker.
//
// # Topics and groups
//
// Topics and consumer groups are created on first use. The subscribers of
// one group compete for its messages; every group of a topic gets every
// message (fan-out). A group receives the messages published after it was
// created (by the first NewSubscriber naming it), and keeps receiving them
// while it has no subscriber, like a durable subscription: it lives as long
// as the broker. This is what Pub/Sub subscriptions, RabbitMQ queues bound to
// an exchange and SQS queues subscribed to SNS do, so code tested on mem://
// behaves the same on them; retaining every message for groups that might
// appear later would need unbounded memory. One exception keeps messages from being lost: messages
// published to a topic that has no group yet are held (within the buffer
// bound) and go to the first group created on the topic. So "publish, then
// subscribe" works for one group, and a dead-letter topic that nobody
// watches yet keeps its dead letters.
//
// # Delivery semantics
//
// At-least-once. A delivery stays in flight until it is settled:
//
//   - Ack removes the message.
//   - Nack(delay) redelivers it no sooner than delay (at once for 0).
//   - A delivery not settled within its AckTimeout (default 30s; the
//     subscriber's SubscriberOptions.AckTimeout, else the broker's) is
//     redelivered: this is what a crashed consumer looks like. Its late Ack
//     then fails with ErrExpired and does nothing.
//   - Subscriber.Close makes the subscriber's unsettled deliveries
//     available for redelivery at once.
//
// Message.Attempt counts deliveries: 1, 2, ... When SubscriberOptions.
// MaxAttempts is > 0, a message whose delivery number MaxAttempts is nacked
// or times out is published instead to SubscriberOptions.DeadLetterTopic
// (default "<topic>.dlq") in the same broker, with the same ID, key,
// payload and headers plus broker.HeaderDeadReason, HeaderDeadAttempts and
// HeaderOriginalTopic. Dead letters are never refused for lack of room.
//
// Redeliveries go to the front of the group's queue.
//
// # Scheduled delivery
//
// A message published with Message.DeliverAt in the future is held in each
// group (counted as Delayed, and against Buffer) and joins the back of the
// group's queue when it is due, on a timer of the monotonic clock: never
// before DeliverAt, and late only by the timer's wake-up and the messages
// ready before it (no cap on the delay). It leaves its key's publish order:
// it takes its place among the key's messages when it is due, and holds
// none of them back meanwhile; messages due at the same time join in
// publish order. A delivered message's DeliverAt is zero.
//
// # Per-key ordering
//
// A group hands out the messages of one key (Message.Key) one at a time,
// in publish order: while a message of a key is in flight, waiting for a
// delayed redelivery or for an ack timeout, no later message of that key is
// delivered to any subscriber of the group. So per-key order holds across
// competing subscribers and through nacks, timeouts and crashes, with
// concurrent handlers (use broker.Consume with semantics.PerKey, or any
// Consume: the broker alone already serialises a key). The price is that a
// key's throughput is one message per round trip; messages without a key
// are not ordered and flow freely. A message dead-lettered after
// MaxAttempts lets the next message of its key go.
//
// # Backpressure
//
// Each group holds at most Buffer messages (ready, in flight, delayed or
// waiting for their key; default 65536). Publish waits for room in every
// group of the topic, or for its ctx, whose error it then returns (as a
// *broker.PublishError naming the messages not published when some were).
// SubscriberOptions.Prefetch bounds the unsettled deliveries of one
// subscriber (default: no bound; broker.Consume bounds them itself).
//
// Publish also paces itself to the subscribers: once a group that has
// subscribers holds Pace messages (default 1024), a publisher waits for
// them to take it down by a sixteenth — but never longer than 5 ms
// without that happening. Then it goes on, up to Buffer, and pacing
// resumes once the subscribers catch up (or half a second later), so
// subscribers that are slow, stopped, or waiting for the publisher
// themselves (a handler publishing to its own topic) cost a publisher at
// most 5 ms once in a while, never a deadlock. A group with no subscriber
// (publish, then subscribe) fills up to Buffer without waiting.
// Pacing keeps a busy group's messages few enough to stay in the CPU's
// caches, where unpaced each would wait behind up to 65536 others: in five
// runs on a 2-core AMD EPYC VM (2026-12-06) BenchmarkEndToEnd measured
// 2.27–2.91M msg/s at 463–607 CPU-ns per message paced (queuekit) and
// 1.81–2.25M at 638–786 unpaced (queuekit-unpaced, Pace -1):
//
//	go test -c -o /tmp/mem.test ./adapters/memory && cd adapters/memory
//	/tmp/mem.test -test.run '^$' -test.bench 'EndToEnd$/queuekit' -test.benchtime 3000000x -test.count 5
//
// Pace -1 (URL pace=-1) turns pacing off.
//
// # Messages
//
// Publish copies each message, its payload and its headers, so the caller
// may reuse the Message, its buffers and its maps as soon as Publish returns.
// (A message costs one allocation, besides its ID and its headers' copy: a
// small payload goes into that allocation when the message is published
// alone to one group, else into a shared 8 KiB chunk, which stays in memory
// while any message copied into it is referenced.) A delivered Message
// belongs to the broker: its Payload and Headers are shared by every
// delivery of the message and a redelivery is copied from the first
// delivery, so handlers must treat it as read-only and Clone it to change
// it. Messages larger than MaxMessageSize (default 10 MiB, as measured by
// Message.Size) fail Publish with broker.ErrTooLarge before anything is
// published.
//
// # Throughput and the garbage collector
//
// At a million messages a second the broker's main cost is the garbage
// collector's: each message is an allocation of about 350 bytes (64-byte
// payload), so a program whose live heap is a few megabytes collects a
// hundred or more times a second, and on some virtual machines the
// runtime's handing memory back to the kernel and touching it again costs
// as much as the broker's own work. On a 2-core VM (2026-12-06, a channel
// pipeline at 6.9M msg/s), before pacing, BenchmarkEndToEnd measured
// 1.1–1.3M msg/s at the default GOGC=100 and 1.4–1.8M at GOGC=400, in alternating runs;
// a loop doing nothing but allocate those 350 bytes ran at 4M/s and 9.6M/s.
// GOGC (or a larger live heap, which spaces collections out the same way)
// is the application's setting to make, not the library's:
//
//	go test -c -o /tmp/mem.test ./adapters/memory && cd adapters/memory
//	GOGC=400 /tmp/mem.test -test.run '^$' -test.bench 'EndToEnd$' -test.benchmem
//
// # Close
//
// After Close, Publish, Receive, Ack and Nack return broker.ErrClosed; a
// Publish or Receive waiting at the time returns it too. Closing a Broker closes the
// publishers and subscribers it made. When the last handle on a broker is
// closed, its messages are gone.
//
// # URL parameters
//
//	ack_timeout  default AckTimeout of subscribers, such as 500ms or 30s (default 30s)
//	buffer       messages a group holds before Publish waits (default 65536)
//	pace         messages a group with subscribers holds before Publish waits for them, briefly; -1: off (default 1024)
//	max_size     largest message in bytes; -1 for no limit (default 10485760)
//
// Unknown parameters are an error that lists these. The first Open of a
// name decides its buffer and pace; a later Open asking for another fails.
//
// # Statistics
//
// Broker.Stats and Broker.Depth report, per group, the messages ready, in
// flight, delayed and waiting for their key, with counters, for metrics and
// lag.
package memory
