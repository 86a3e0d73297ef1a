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
		Open: func(ctx context.Context) (broker.Broker, error) {
			return memory.New(memory.Options{}), nil
		},
		AckTimeout: 300 * time.Millisecond,
	})
}
