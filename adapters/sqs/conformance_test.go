package sqs_test

import (
	"context"
	"net/url"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestConformance runs the shared suite three ways: plain queues (no
// fan-out, native RedrivePolicy), SNS fan-out with a queue per group, and
// SNS fan-out over FIFO queues (per-key order), in parallel.
func TestConformance(t *testing.T) {
	ep := testenv.SQS(t)
	for _, c := range []struct{ name, params string }{
		{"sqs", ""},
		{"sqs-sns", "&fanout=true"},
		{"sqs-fifo", "&fanout=true&fifo=true"},
	} {
		// 1s long polls: Close waits for the polls in flight.
		raw := "sqs://?wait_time=1s&endpoint=" + url.QueryEscape(ep) + c.params
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // separate topics and brokers; mostly waiting on timers
			conformance.Run(t, conformance.Harness{
				Name: c.name,
				Open: func(ctx context.Context) (broker.Broker, error) { return broker.Open(ctx, raw) },
			})
		})
	}
}
