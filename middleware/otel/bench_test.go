package otel_test

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/queuekit/queuekit/broker"
	qkotel "github.com/queuekit/queuekit/middleware/otel"
)

// BenchmarkMiddleware measures the consumer middleware per message with the
// real SDK: metrics into a ManualReader, and spans either not sampled
// (/queuekit-metrics) or sampled and ended (/queuekit-traced). /raw is the
// bare handler.
func BenchmarkMiddleware(b *testing.B) {
	noop := broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	for _, bc := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{{"raw", nil}, {"queuekit-metrics", sdktrace.NeverSample()}, {"queuekit-traced", sdktrace.AlwaysSample()}} {
		h := broker.Handler(noop)
		if bc.sampler != nil {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(bc.sampler))
			defer tp.Shutdown(context.Background())
			tel, err := qkotel.New(qkotel.Options{MeterProvider: mp, TracerProvider: tp})
			if err != nil {
				b.Fatal(err)
			}
			h = tel.Middleware()(noop)
		}
		b.Run(bc.name, func(b *testing.B) {
			m := &broker.Message{ID: "id", Topic: "orders", Attempt: 1}
			ctx := context.Background()
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				_ = h.Handle(ctx, m)
				n++
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
