package watermill

import (
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/queuekit/queuekit/semantics"
)

// GoChannelCapabilities are the claims the bridge keeps over a Watermill
// GoChannel (measured by TestConformanceGoChannel). The bridge subscribes
// once per group and keeps the subscription, so every group gets every
// message (FanOut), the subscribers of a group compete for it
// (ConsumerGroups), and what a closed subscriber had not settled is nacked
// and sent again by GoChannel to the others of its group (CrashRedelivery,
// within the process: GoChannel keeps nothing across a restart). GoChannel
// sends each message from a goroutine of its own, so no order is kept.
var GoChannelCapabilities = semantics.Capabilities{FanOut: true, ConsumerGroups: true, CrashRedelivery: true}

// NewGoChannel returns a Broker over gc, which it owns (Close closes it),
// claiming GoChannelCapabilities; wrap it with broker.New. Publish copies
// payloads, since GoChannel hands the slice itself to its subscribers.
// GoChannel's Ack is a signal its delivery goroutine waits on, so the Broker
// takes at-most-once subscriptions (Options.SyncAck).
//
// Two GoChannel settings show through: with Persistent, a group's
// subscription (made once, see the package doc) first receives everything
// published to the topic before; with BlockPublishUntilSubscriberAck,
// Publish waits for every group of the topic, consumed or not, to ack, and
// Watermill's Publish has no context to give up with.
func NewGoChannel(gc *gochannel.GoChannel) *Broker {
	b, _ := New(Options{ // cannot fail: every required option is set
		Name:         "gochannel",
		Publisher:    gc,
		Subscriber:   gc,
		Capabilities: GoChannelCapabilities,
		CopyPayload:  true,
		SyncAck:      true,
	})
	return b
}
