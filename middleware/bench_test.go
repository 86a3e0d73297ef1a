package middleware_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe"
)

// BenchmarkDefaultStack measures what the default stack (dlq, retry, dedupe
// with the memory store, recover) adds per message on the success path:
// /raw calls the handler alone, /queuekit through the stack. Each message
// has a fresh ID, so dedupe claims and completes every one.
func BenchmarkDefaultStack(b *testing.B) {
	const pool = 1 << 12
	msgs := make([]*broker.Message, pool)
	for i := range msgs {
		msgs[i] = &broker.Message{ID: fmt.Sprintf("%08d-0000-4000-8000-000000000000", i), Key: "k", Topic: "orders", Attempt: 1}
	}
	var handled int
	handler := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error { handled++; return nil })
	pub, err := memory.New(memory.Options{}).NewPublisher(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		h    broker.Handler
	}{
		{"raw", handler},
		{"queuekit", middleware.Default(middleware.Options{
			Publisher: pub,
			// Fewer keys than the pool, so an ID is forgotten before it comes round again.
			Store: dedupe.NewMemoryStore(dedupe.MemoryOptions{MaxKeys: pool / 4}),
		})(handler)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if err := bc.h.Handle(ctx, msgs[i&(pool-1)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(testing.AllocsPerRun(100, func() {
				_ = bc.h.Handle(ctx, msgs[i&(pool-1)])
				i++
			})), "allocs/msg")
		})
	}
}
