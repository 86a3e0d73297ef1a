package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
)

// TestConformance runs the shared property suite against a fresh private
// broker per property. A short AckTimeout keeps the crash and no-redelivery
// windows short.
func TestConformance(t *testing.T) {
	conformance.Run(t, conformance.Harness{
		Name: "memory",
		Open: func(ctx context.Context) (*broker.Broker, error) {
			return broker.New(memory.New(memory.Options{})), nil
		},
		// A user's default: mem:// with no parameters (each Open of the
		// unnamed broker is private to its handles).
		Defaults: func(ctx context.Context) (*broker.Broker, error) {
			return broker.Open(ctx, "mem://")
		},
		AckTimeout: 300 * time.Millisecond,
	})
}
