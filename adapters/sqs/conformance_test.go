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
// Subscriber.Close waits for its long polls, and the suite closes many
// subscribers, so two runs short-poll (wait_time=0s) and the FIFO run
// long-polls for 1s (a FIFO queue hands out one message per group at a
// time, and a short poll finds nothing while every group is in flight):
// that only makes them quicker. The defaults property runs the core
// properties again with nothing but the mode in the URL; in queue mode that
// is the default URL, with which TestConformanceDefaults runs the whole
// suite, so the sqs run leaves it out. Each run has eight properties going
// at once (Harness.Parallel): they wait on long polls and visibility
// timeouts, each on queues of its own.
func TestConformance(t *testing.T) {
	t.Parallel() // alongside TestConformanceDefaults: both mostly wait on timers
	for _, c := range []struct {
		name, mode, tuning string
		defaults           bool
	}{
		{"sqs", "", "&wait_time=0s", false},
		{"sqs-sns", "&fanout=true", "&wait_time=0s", true},
		{"sqs-fifo", "&fanout=true&fifo=true", "&wait_time=1s", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // separate topics and brokers; mostly waiting on timers
			conform(t, c.name, c.mode+c.tuning, c.mode, c.defaults)
		})
	}
}

// TestConformanceDefaults runs the suite on a broker opened with nothing
// but the endpoint, as `queuekit conformance -broker 'sqs://?endpoint=…'`
// does: every default (long polls of wait_time, visibility, prefetch) must
// pass it. Its defaults property is unsupported: the whole run is that.
func TestConformanceDefaults(t *testing.T) {
	t.Parallel() // alongside TestConformance: it mostly waits on long polls
	conform(t, "sqs-defaults", "", "", false)
}

// conform runs the suite on the test endpoint with params, and, when
// withDefaults is set, the defaults property with defaults for params.
// fauxqs is a process of its own that the suite's consumer processes reach
// too (testenv exports its endpoint), and the fault properties cut
// connections through a proxy to it.
func conform(t *testing.T, name, params, defaults string, withDefaults bool) {
	ep := testenv.SQS(t)
	u, err := url.Parse(ep)
	if err != nil {
		t.Fatal(err)
	}
	openAt := func(ctx context.Context, endpoint, params string) (*broker.Broker, error) {
		return broker.Open(ctx, "sqs://?endpoint="+url.QueryEscape(endpoint)+params)
	}
	h := conformance.Harness{
		Name:                  name,
		Open:                  func(ctx context.Context) (*broker.Broker, error) { return openAt(ctx, ep, params) },
		SharedAcrossProcesses: true,
		Addr:                  u.Host,
		Parallel:              8,
		OpenAt: func(ctx context.Context, addr string) (*broker.Broker, error) {
			return openAt(ctx, "http://"+addr, params)
		},
	}
	if withDefaults {
		h.Defaults = func(ctx context.Context) (*broker.Broker, error) { return openAt(ctx, ep, defaults) }
	}
	conformance.Run(t, h)
}
