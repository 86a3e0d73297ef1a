package conformance_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
)

// An adapter proves itself with one test function.
func ExampleRun() {
	testConformance := func(t *testing.T) {
		conformance.Run(t, conformance.Harness{
			Name: "memory",
			Open: func(ctx context.Context) (*broker.Broker, error) {
				return broker.New(memory.New(memory.Options{})), nil
			},
		})
	}
	_ = testConformance // func TestConformance(t *testing.T) in a _test.go file
}

// Tools run the suite without a *testing.T and read the report.
func ExampleCheck() {
	rep, err := conformance.Check(context.Background(), conformance.Harness{
		Name:       "memory",
		Open:       func(context.Context) (*broker.Broker, error) { return broker.New(memory.New(memory.Options{})), nil },
		AckTimeout: time.Second,
	}, "roundtrip", "alo.no-loss", "group.fanout")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, res := range rep.Results {
		fmt.Println(res.Property, res.Verdict, res.Published, res.Lost)
	}
	// Output:
	// roundtrip pass 3 0
	// alo.no-loss pass 1000 0
	// group.fanout pass 20 0
}
