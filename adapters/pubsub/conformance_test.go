package pubsub_test

import (
	"context"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
)

// TestConformance runs the shared property suite against pstest (or the
// server testenv.PubSub finds). pstest forwards a dead letter again and
// again; the suite counts the copies as duplicates.
func TestConformance(t *testing.T) {
	url := brokerURL(t)
	conformance.Run(t, conformance.Harness{
		Name: "pubsub",
		Open: func(ctx context.Context) (broker.Broker, error) { return broker.Open(ctx, url) },
	})
}
