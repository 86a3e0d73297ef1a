package otel_test

import (
	"context"
	"fmt"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe"
	qkotel "github.com/queuekit/queuekit/middleware/otel"
)

func ExampleTelemetry_Instrument() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader() // in production: the Prometheus or OTLP exporter
	tel, _ := qkotel.New(qkotel.Options{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})

	b := broker.New(memory.New(memory.Options{}))
	defer b.Close(ctx)
	raw, _ := b.NewPublisher(ctx)
	pub := tel.Publisher(raw) // counts, and puts traceparent in the headers
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders"})

	opts := middleware.Options{Publisher: pub, Store: dedupe.NewMemoryStore(dedupe.MemoryOptions{})}
	tel.Instrument(&opts)
	h := middleware.Default(opts)(broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))

	_ = pub.Publish(ctx, "orders", &broker.Message{ID: "order-1"})
	d, _ := sub.Receive(ctx)
	_ = h.Handle(ctx, d.Message())
	_ = d.Ack(ctx)

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(ctx, &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name != "queuekit.messages.in_flight" {
			fmt.Println(m.Name, s.DataPoints[0].Value)
		}
	}
	// Unordered output:
	// queuekit.messages.published 1
	// queuekit.messages.consumed 1
	// queuekit.messages.acked 1
}
