package watermill

import (
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/queuekit/queuekit/semantics"
)

// GoChannelCapabilities are the claims a Watermill GoChannel keeps (measured
// by TestConformanceGoChannel): every Subscribe call gets every message, so
// each queuekit group gets them all (FanOut) but the subscribers of one
// group do not share them (no ConsumerGroups); messages are sent to a
// subscriber by one goroutine each, so no order is kept; and what a closed
// subscription had not acked is dropped (no CrashRedelivery).
var GoChannelCapabilities = semantics.Capabilities{FanOut: true}

// NewGoChannel returns a Broker over gc, which it owns (Close closes it),
// claiming GoChannelCapabilities. Publish copies payloads, since GoChannel
// hands the slice itself to its subscribers.
func NewGoChannel(gc *gochannel.GoChannel) *Broker {
	b, _ := New(Options{ // cannot fail: every required option is set
		Name:         "gochannel",
		Publisher:    gc,
		Subscriber:   gc,
		Capabilities: GoChannelCapabilities,
		CopyPayload:  true,
	})
	return b
}
