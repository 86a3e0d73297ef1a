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
}

type property struct {
	name   string
	checks string
	need   string
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
		checks: "at-most-once never runs the handler twice for a message, even after handler errors, within the observation window"},
	{name: "group.competing", run: groupCompeting, need: "ConsumerGroups",
		claims: func(c semantics.Capabilities) bool { return c.ConsumerGroups },
		checks: "two subscribers of one group share the messages, none delivered to both at once"},
	{name: "group.fanout", run: groupFanout, need: "FanOut",
		claims: func(c semantics.Capabilities) bool { return c.FanOut },
		checks: "two groups each receive every message"},
	{name: "order.per-key", run: orderPerKey, need: "PerKeyOrdering", ordered: true,
		claims: func(c semantics.Capabilities) bool { return c.PerKeyOrdering },
		checks: "Harness.Messages over 8 keys are handled in publish order within each key (Consume with PerKey, concurrency 4)"},
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
	{name: "attempt.count", run: attemptCount, need: "AttemptCount",
		claims: func(c semantics.Capabilities) bool { return c.AttemptCount },
		checks: "a message nacked twice is delivered with Attempt 1, 2, 3"},
}

// Properties returns the suite's properties in the order they run.
func Properties() []Property {
	out := make([]Property, len(properties))
	for i, p := range properties {
		out[i] = Property{Name: p.name, Checks: p.checks, Needs: p.need}
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
