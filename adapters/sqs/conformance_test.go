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
	// Subscriber.Close waits for its long polls, and the suite closes many
	// subscribers, so two runs short-poll (wait_time=0s; the long-polling
	// path has tests of its own). The FIFO run long-polls for 1s: a FIFO
	// queue hands out one message per group at a time, and a short poll
	// finds nothing while every group is in flight.
	for _, c := range []struct{ name, params string }{
		{"sqs", "&wait_time=0s"},
		{"sqs-sns", "&wait_time=0s&fanout=true"},
		{"sqs-fifo", "&wait_time=1s&fanout=true&fifo=true"},
	} {
		raw := "sqs://?endpoint=" + url.QueryEscape(ep) + c.params
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // separate topics and brokers; mostly waiting on timers
			conformance.Run(t, conformance.Harness{
				Name: c.name,
				Open: func(ctx context.Context) (broker.Broker, error) { return broker.Open(ctx, raw) },
			})
		})
	}
}
