package watermill_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/adapters/watermill/internal/wmtest"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
)

// TestConformanceGoChannel runs the conformance suite, unchanged, through
// the bridge against Watermill's GoChannel with its default config
// (gochannel.Config{}: not persistent, unbuffered). The verdicts measured:
// every property GoChannelCapabilities claims passes except
// close.graceful-consume, which fails: GoChannel drops what a closed
// subscription had not acked (including what Consume gave back with Nack at
// shutdown), so the next subscriber of the group gets nothing. Unclaimed
// properties are run again with every capability claimed, and fail: two
// subscribers of a group both get every message (group.competing), a message
// left unsettled by a closed subscriber never comes back
// (alo.crash-redelivers), and one goroutine per message reorders keys
// (order.per-key). DelayedNack holds through the bridge's timer.
//
// The harness's Timeout (10s) bounds the expected failure, which waits for
// messages that never come; every passing property needs well under a second
// but amo.no-redelivery (its 3s observation window) and nack.delay (1s).
func TestConformanceGoChannel(t *testing.T) {
	wmtest.Run(t, wmtest.Suite{
		Harness: conformance.Harness{
			Name: "watermill-gochannel",
			Open: func(context.Context) (*broker.Broker, error) {
				return broker.New(watermill.NewGoChannel(gochannel.NewGoChannel(gochannel.Config{}, nil))), nil
			},
			Timeout: 10 * time.Second,
		},
		Expected:  map[string]conformance.Verdict{},
		Unclaimed: []string{"order.per-key"},
		OpenClaimingAll: func(context.Context) (*broker.Broker, error) {
			gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
			b, err := watermill.New(watermill.Options{Name: "gochannel", Publisher: gc, Subscriber: gc,
				Capabilities: wmtest.ClaimAll(watermill.GoChannelCapabilities), CopyPayload: true, SyncAck: true})
			if err != nil {
				return nil, err
			}
			return broker.New(b), nil
		},
		UnclaimedTimeout: 5 * time.Second,
	})
}
