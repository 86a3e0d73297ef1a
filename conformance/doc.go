// Package conformance is queuekit's shared property suite: it measures, for
// any adapter, what is really delivered — lost, duplicated and reordered
// messages, redelivery after a nack and after a crash, dead-lettering after
// N attempts, and what Close does — and reports it per property.
//
// # Running it against an adapter
//
// An adapter's test is a few lines (testing/fstest and testing/slogtest
// work the same way):
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, conformance.Harness{
//			Name: "mine",
//			Open: func(ctx context.Context) (*broker.Broker, error) { return mine.Open(ctx, url) },
//		})
//	}
//
// Run makes one subtest per property (go test -run 'TestConformance/alo.no-loss'
// runs one). Every property opens its own broker with Harness.Open, uses a
// fresh topic (Harness.NewTopic), fresh consumer groups named after the
// topic, a new publisher and new subscribers, and closes them all. A
// group's first subscriber is created before anything is published to its
// topic, so an adapter must deliver to a group every message published after
// its first NewSubscriber returned. Check runs the same suite without a *testing.T,
// for tools. Properties run one after the other; Harness.Parallel runs
// several at once, for a broker that makes the suite mostly wait.
//
// # Capabilities decide what runs
//
// A property that needs a claim of semantics.Capabilities the adapter does
// not make is reported "unsupported" and skipped with t.Skip("unsupported:
// ...") — never passed. A claim is a promise that is tested.
//
// # The properties
//
// Every property counts with a Ledger (published, delivered,
// handled) and fails with numbers and ids, such as "lost 3 of 1000: ids ...".
// Waiting is on ledger conditions with a deadline (Harness.Timeout), never a
// fixed sleep.
//
//	roundtrip                 ID, Key, Payload, Headers, Topic, Attempt (1 on the first delivery)
//	                          and PublishedAt arrive as published; Publish gives a message
//	                          without an ID a new one and stamps PublishedAt.
//	alo.nack-redelivers       every delivery nacked with no delay comes back, with Attempt >= 2
//	                          where AttemptCount is claimed (raw Subscriber).
//	alo.crash-redelivers      a subscriber receives 5 messages, never settles them and closes;
//	                          a new subscriber of the group gets all 5, with Attempt >= 2 where
//	                          counted (needs CrashRedelivery).
//	alo.no-loss               Harness.Messages over 16 keys, published by 4 concurrent producers
//	                          in batches, consumed with broker.Consume at-least-once (concurrency
//	                          8, two subscribers of one group where ConsumerGroups is claimed);
//	                          the first attempt of every 7th message fails. Nothing may be lost;
//	                          duplicates are counted, not failed.
//	amo.no-redelivery         40 messages consumed at-most-once, every 5th handler failing: no
//	                          handler runs twice for a message, watched until 1.5 x AckTimeout
//	                          after all were handled.
//	group.competing           two subscribers of one group share the messages (each gets some;
//	                          rounds of 10 are published, at most 16, until both have had one)
//	                          and no message is copied to both (needs ConsumerGroups).
//	group.fanout              two groups each get all 20 messages (needs FanOut).
//	order.per-key             Harness.Messages over 8 keys, published in batches of 50 and
//	                          consumed with Consume PerKey, concurrency 4, are first handled in
//	                          publish order within each key (needs PerKeyOrdering).
//	nack.delay                a delivery nacked with a 1s delay comes back, not sooner than 1s
//	                          after Nack was called (5ms of slack for clocks that keep
//	                          milliseconds) (needs DelayedNack).
//	dlq.after-max-attempts    messages nacked on every delivery of a subscriber with
//	                          MaxAttempts 3 reach "<topic>.dlq" with their ID and payload; each
//	                          distinct ID must arrive (copies beyond one are counted as
//	                          duplicates: some brokers forward more than once), and where
//	                          AttemptCount is claimed each was delivered exactly 3 times, with
//	                          Attempt 1, 2, 3, on the main subscription first (needs DeadLetter).
//	close.publisher-flush     5 goroutines publish while the publisher is closed: every Publish
//	                          that returned nil is delivered, the others return ErrClosed, and so
//	                          does Publish after Close.
//	close.graceful-consume    Consume is cancelled while 4 handlers run: it returns only after
//	                          they finish (their context not cancelled), and a new subscriber of
//	                          the group gets every message that was not handled — nothing
//	                          un-handled was acked.
//	headers.roundtrip         a 1 KiB payload of every byte value with 20 headers (mixed case,
//	                          unicode, newlines, separators, an empty value, 500 bytes), an empty
//	                          payload, a 64 KiB random payload (or MaxMessageSize/2) and zeros
//	                          arrive byte for byte.
//	publish.oversize-refused  a batch holding a message over MaxMessageSize fails with a
//	                          *broker.TooLargeError (errors.Is ErrTooLarge, kind invalid
//	                          argument) naming it, and nothing of the batch is delivered; a
//	                          message of exactly MaxMessageSize (by Message.Size, when <= 4 MiB)
//	                          is accepted (needs MaxMessageSize > 0).
//	ack.idempotent            Ack twice returns nil, Nack after Ack returns ErrAlreadySettled;
//	                          Nack twice returns nil, Ack after Nack returns ErrAlreadySettled and
//	                          the nacked message still comes back.
//	attempt.count             a message nacked twice is delivered with Attempt 1, 2, 3 (needs
//	                          AttemptCount).
//
// Contract properties, the same on every adapter (package broker and the
// driver contract):
//
//	topology.declare          groups declared before a publish each get every later message.
//	topology.no-group-refused Publish to a topic without a group fails with ErrNoGroup.
//	headers.reserved-refused  queuekit-id / queuekit-attempt user headers are refused.
//	ctx.end-kind              an operation whose ctx ends fails with kind Canceled.
//	close.order               Broker.Close closes what it made; later calls return ErrClosed.
//	publish.delay             scheduled messages (Message.DeliverAt) are never delivered early,
//	                          and within max(2s, AckTimeout) (needs ScheduledDelivery).
//
// Failure properties:
//
//	order.per-key-after-nack  order.per-key with every 10th first delivery failed (half with a
//	                          50ms delay): Consume keeps a failed message's key.
//	order.per-key-after-crash, alo.no-loss-after-crash, amo.no-redelivery-after-crash
//	                          consumers killed mid-stream Harness.Kills times (3): child
//	                          processes killed with SIGKILL where Harness.SharedAcrossProcesses,
//	                          else a subscriber closed under a running Consume.
//	fault.cut-publish, fault.cut-consume
//	                          every connection through the suite's TCP proxy (Harness.Addr,
//	                          OpenAt) reset 5 times (100 with QUEUEKIT_CONFORMANCE_LONG=1) while
//	                          messages flow: nothing confirmed lost; recovery p50/max reported.
//	                          The payloads (256 random bytes each) must have passed the proxy:
//	                          an adapter whose connections go around it (a Kafka client
//	                          following an advertised address) fails rather than passing
//	                          cuts that never reached it.
//	fault.broker-restart      the broker restarted mid-stream (Harness.Restart): nothing lost.
//	latency                   publish -> handle p50/p99 at 200 msg/s.
//	defaults                  the core properties again with Harness.Defaults (the adapter's
//	                          default URL): a property passing only with tuned settings fails.
//
// Properties about the adapter itself (redelivery, crash, dead letters,
// settling) use Subscriber.Receive, Ack and Nack directly; properties about
// consumer semantics (no loss, at-most-once, ordering, graceful shutdown) use
// broker.Consume, as applications do.
//
// # Observation windows
//
// Some properties must show that something does NOT happen, which no signal
// announces. amo.no-redelivery watches for a second handling until 1.5 x
// AckTimeout after every message was handled once: long enough for an adapter
// that lost an ack to redeliver after the ack timeout, short enough to keep
// the suite fast. A broker that redelivers later than that passes falsely, so
// an adapter whose timers are coarse should set a Harness.AckTimeout it
// actually honours. group.competing judges "delivered to both subscribers of
// a group" by attempt number where AttemptCount is claimed (two deliveries
// with the same Attempt are a copy, not a redelivery) and otherwise by time:
// a second delivery within half an AckTimeout of the first is a copy. These
// windows trade test time against the certainty of a negative. nack.delay
// needs none: it waits for the redelivery and checks when it came.
//
// Errors that broker.Consume reports through OnError (an Ack that failed
// because a slow consumer let the delivery expire, say) are noted in the
// detail but do not fail a property by themselves: what they lead to — loss
// or duplicates — is what the ledger judges. Settling through the raw
// Subscriber is strict: any Ack or Nack error fails the property.
//
// # The report
//
// When QUEUEKIT_CONFORMANCE_REPORT=<file> is set, Run writes the properties
// it ran as JSON (the names are stable; other tools read them):
//
//	{"adapter":"memory","results":[
//	 {"property":"alo.no-loss","verdict":"pass","published":1000,"handled":1000,
//	  "lost":0,"duplicates":12,"reordered":0,"detail":""}]}
//
// verdict is pass, fail or unsupported; detail says why a property failed or
// is unsupported, and what was observed when it passed. published, handled,
// lost and duplicates are the Ledger's counts (duplicates are allowed under
// at-least-once and only fail amo.no-redelivery); reordered is counted only
// by order.per-key, the one property that publishes and consumes in a defined
// per-key order, and is 0 elsewhere. The path is relative
// to the test's package directory; prefer an absolute one. A "{adapter}" in
// the path is replaced by Harness.Name, which is the way to run several
// packages (`go test ./adapters/...` runs one process per package, and
// processes overwrite each other's file). Within one test binary, a second
// Run for the same adapter merges its results into the file (a property run
// again replaces its old result); a Run for another adapter writes
// "<file without extension>.<adapter><extension>" instead, since one report
// holds one adapter. RunOnly runs named properties (one that needs a harness
// of its own, such as fault.broker-restart against a server the test owns)
// and merges its results into the report the same way, also into a file a
// whole Run wrote before, in another process. Report, ReadReport and Check
// give tools the same data.
package conformance
