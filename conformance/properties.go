package conformance

import (
	"github.com/queuekit/queuekit/semantics"
)

// Property describes one property of the suite.
type Property struct {
	// Name is the stable name used in subtests and reports.
	Name string
	// Checks says in one sentence what the property checks.
	Checks string
	// Needs names the Capabilities claim the property needs ("" when every
	// adapter must keep it).
	Needs string
	// Hook names the Harness fields the property needs ("" for none);
	// without them it is unsupported, with a detail naming them.
	Hook string
}

type property struct {
	name   string
	checks string
	need   string
	hook   string
	claims func(semantics.Capabilities) bool // nil: always runs
	// ordered: the property publishes and consumes in a defined per-key
	// order, so the Ledger's reordering count means something. Elsewhere
	// (concurrent producers, unordered consumers) it is reported as 0.
	ordered bool
	run     func(*probe) error
}

// needs returns the missing claim, or "" when the property applies.
func (p property) needs(c semantics.Capabilities) string {
	if p.claims == nil || p.claims(c) {
		return ""
	}
	return p.need
}

// properties is the suite, in report order: DESIGN.md's twelve first.
var properties = []property{
	{name: "roundtrip", run: roundtrip,
		checks: "ID, Key, Payload, Headers, Topic, Attempt and PublishedAt arrive as published; Publish assigns a missing ID"},
	{name: "alo.nack-redelivers", run: aloNackRedelivers,
		checks: "a delivery nacked with no delay comes back (with a higher Attempt where counted)"},
	{name: "alo.crash-redelivers", run: aloCrashRedelivers, need: "CrashRedelivery",
		claims: func(c semantics.Capabilities) bool { return c.CrashRedelivery },
		checks: "deliveries left unsettled by a subscriber that closes come back to a new subscriber of the group"},
	{name: "alo.no-loss", run: aloNoLoss,
		checks: "Harness.Messages published concurrently and consumed at-least-once with injected handler failures are all handled"},
	{name: "amo.no-redelivery", run: amoNoRedelivery,
		checks: "at-most-once never runs the handler twice for a message, even after handler errors, within the observation window; an adapter may refuse at-most-once (unsupported), never run it weaker"},
	{name: "group.competing", run: groupCompeting, need: "ConsumerGroups",
		claims: func(c semantics.Capabilities) bool { return c.ConsumerGroups },
		checks: "two subscribers of one group share the messages, none delivered to both at once"},
	{name: "group.fanout", run: groupFanout, need: "FanOut",
		claims: func(c semantics.Capabilities) bool { return c.FanOut },
		checks: "two groups each receive every message"},
	{name: "order.per-key", run: orderPerKey, need: "PerKeyOrdering", ordered: true,
		claims: func(c semantics.Capabilities) bool { return c.PerKeyOrdering },
		checks: "Harness.Messages over 8 keys are handled in publish order within each key (Consume with PerKey, concurrency 4)"},
	{name: "order.per-key-after-nack", run: orderPerKeyAfterNack, need: "PerKeyOrdering", ordered: true,
		claims: func(c semantics.Capabilities) bool { return c.PerKeyOrdering },
		checks: "Harness.Messages over 8 keys under per-key order, every 10th first delivery failed (half with a 50ms delay): each key's messages handled in publish order (Consume with PerKey, concurrency 4)"},
	{name: "order.per-key-after-crash", run: orderPerKeyAfterCrash, need: "PerKeyOrdering and CrashRedelivery", ordered: true,
		claims: func(c semantics.Capabilities) bool { return c.PerKeyOrdering && c.CrashRedelivery },
		checks: "Harness.Messages over 16 keys consumed under per-key order by consumers killed mid-stream Harness.Kills times: nothing lost, each key's messages first handled in publish order"},
	{name: "alo.no-loss-after-crash", run: aloNoLossAfterCrash, need: "CrashRedelivery",
		claims: func(c semantics.Capabilities) bool { return c.CrashRedelivery },
		checks: "Harness.Messages consumed at-least-once by consumers killed mid-stream Harness.Kills times (child processes with SIGKILL where the harness allows): nothing lost"},
	{name: "amo.no-redelivery-after-crash", run: amoNoRedeliveryAfterCrash,
		checks: "Harness.Messages consumed at-most-once by consumers killed mid-stream Harness.Kills times: no message handled twice (loss allowed); an adapter may refuse at-most-once"},
	{name: "nack.delay", run: nackDelay, need: "DelayedNack",
		claims: func(c semantics.Capabilities) bool { return c.DelayedNack },
		checks: "a delivery nacked with a 1s delay comes back, and not sooner than 1s"},
	{name: "dlq.after-max-attempts", run: dlqAfterMaxAttempts, need: "DeadLetter",
		claims: func(c semantics.Capabilities) bool { return c.DeadLetter },
		checks: "a message nacked on every delivery reaches the dead-letter topic with its ID after MaxAttempts deliveries"},
	{name: "close.publisher-flush", run: closePublisherFlush,
		checks: "every Publish that returned nil around a concurrent Close is delivered; Publish after Close is ErrClosed"},
	{name: "close.graceful-consume", run: closeGracefulConsume,
		checks: "cancelling Consume lets in-flight handlers finish and be acked, and gives back what was received but not handled"},
	{name: "headers.roundtrip", run: headersRoundtrip,
		checks: "binary, empty and large payloads and 20 headers (unicode, newlines, empty values) arrive byte for byte"},
	{name: "publish.oversize-refused", run: publishOversizeRefused, need: "MaxMessageSize",
		claims: func(c semantics.Capabilities) bool { return c.MaxMessageSize > 0 },
		checks: "a batch with a message over MaxMessageSize fails with ErrTooLarge and publishes nothing; a message of exactly MaxMessageSize is accepted"},
	{name: "ack.idempotent", run: ackIdempotent,
		checks: "a second Ack or Nack returns nil, settling the other way returns ErrAlreadySettled, a nacked delivery still comes back"},
	{name: "topology.declare", run: topologyDeclare,
		checks: "groups declared with Broker.Declare before a publish each receive every message published after, though their subscribers come later"},
	{name: "topology.no-group-refused", run: topologyNoGroupRefused,
		checks: "Publish to a topic on which no group was declared fails with ErrNoGroup: nothing is silently dropped or parked"},
	{name: "headers.reserved-refused", run: headersReservedRefused,
		checks: "a user header named queuekit-id or queuekit-attempt is refused (InvalidArgument) before any I/O; nothing of it arrives"},
	{name: "ctx.end-kind", run: ctxEndKind,
		checks: "Receive, Publish and NewSubscriber whose ctx ends return an error of kind Canceled matching the ctx's error"},
	{name: "close.order", run: closeOrder,
		checks: "Broker.Close with an open publisher and subscriber succeeds, later calls on them return ErrClosed, a second Close returns nil"},
	{name: "attempt.count", run: attemptCount, need: "AttemptCount",
		claims: func(c semantics.Capabilities) bool { return c.AttemptCount },
		checks: "a message nacked twice is delivered with Attempt 1, 2, 3"},
	{name: "fault.cut-publish", hook: "Addr, OpenAt", run: faultCutPublish,
		checks: "a publisher's connections (through the suite's TCP proxy) are reset 5 times (100 with QUEUEKIT_CONFORMANCE_LONG=1) while it publishes, retrying what fails: every confirmed message is handled; recovery time reported"},
	{name: "fault.cut-consume", hook: "Addr, OpenAt", run: faultCutConsume,
		checks: "a consumer's connections (through the suite's TCP proxy) are reset 5 times (100 long) while Consume runs: every message is handled, consumption resumes by itself; recovery time reported"},
	{name: "fault.broker-restart", hook: "Restart", run: faultBrokerRestart,
		checks: "the broker is restarted (Harness.Restart) in the middle of a publish and consume stream: every confirmed message is handled"},
	{name: "latency", run: latency,
		checks: "publish -> handle latency at 200 msg/s for 2s (open loop): p50 and p99 in the report; nothing lost"},
	{name: "defaults", hook: "Defaults", run: defaults,
		checks: "roundtrip, alo.*, amo.no-redelivery and close.* pass on a broker opened with the adapter's defaults (Harness.Defaults), not only with the harness's tuned settings"},
	{name: "publish.delay", run: publishDelay, need: "ScheduledDelivery",
		claims: func(c semantics.Capabilities) bool { return c.ScheduledDelivery },
		checks: "one Publish of four messages of one key — DeliverAt 2s and 1s ahead, an hour in the past, unset: none delivered before its DeliverAt (1ms slack), each within max(2s, AckTimeout) of it, the past-dated and unset ones at once and before the scheduled ones; Publish does not wait; delivered DeliverAt is zero"},
}

// Properties returns the suite's properties in the order they run.
func Properties() []Property {
	out := make([]Property, len(properties))
	for i, p := range properties {
		out[i] = Property{Name: p.name, Checks: p.checks, Needs: p.need, Hook: p.hook}
	}
	return out
}

// PropertyNames returns the names of the suite's properties in the order
// they run.
func PropertyNames() []string {
	out := make([]string, len(properties))
	for i, p := range properties {
		out[i] = p.name
	}
	return out
}

func propertyByName(name string) (property, bool) {
	for _, p := range properties {
		if p.name == name {
			return p, true
		}
	}
	return property{}, false
}
