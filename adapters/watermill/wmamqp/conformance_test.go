package wmamqp

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/watermill/internal/wmtest"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestConformance runs the conformance suite, unchanged, through the bridge
// against watermill-amqp on the local RabbitMQ, with Config's settings
// (durable pub/sub, publisher confirms). Every property Capabilities claims
// passes; attempt.count and dlq.after-max-attempts are unsupported
// (Watermill counts no deliveries). Every exchange and queue the suite
// declares is deleted at the end.
func TestConformance(t *testing.T) {
	url := testenv.RabbitMQ(t)
	c := &cleanup{}
	t.Cleanup(func() { c.run(t, url) })
	wmtest.Run(t, wmtest.Suite{
		Harness: conformance.Harness{
			Name: "watermill-amqp",
			Open: func(context.Context) (*broker.Broker, error) {
				wb, err := New(url, Options{declared: c.add})
				if err != nil {
					return nil, err
				}
				return broker.New(wb), nil
			},
			Timeout: 30 * time.Second,
		},
		Expected: map[string]conformance.Verdict{
			// Refused: watermill-amqp acks asynchronously (see the
			// package doc).
			"amo.no-redelivery":             conformance.Unsupported,
			"amo.no-redelivery-after-crash": conformance.Unsupported,
		},
	})
}
