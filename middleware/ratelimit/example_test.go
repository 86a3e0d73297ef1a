package ratelimit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/ratelimit"
)

// Like nginx's "limit_req rate=100r/s burst=100 nodelay": a burst of 100
// passes at once, then 100 per second.
func ExampleNew() {
	h := ratelimit.New(ratelimit.Options{Rate: 100, Burst: 100})(broker.HandlerFunc(
		func(context.Context, *broker.Message) error { return nil }))
	start := time.Now()
	for range 100 {
		_ = h.Handle(context.Background(), &broker.Message{})
	}
	fmt.Println("burst passed at once:", time.Since(start) < 50*time.Millisecond)
	// Output:
	// burst passed at once: true
}
