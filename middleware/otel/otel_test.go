package otel_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dlq"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	qkotel "github.com/queuekit/queuekit/middleware/otel"
	"github.com/queuekit/queuekit/middleware/retry"
)

// sdk is a real OpenTelemetry SDK with in-memory readers.
type sdk struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tel    *qkotel.Telemetry
	tp     *sdktrace.TracerProvider
}

func newSDK(t *testing.T) *sdk {
	s := &sdk{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.reader))
	s.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.spans))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()); _ = s.tp.Shutdown(context.Background()) })
	var err error
	if s.tel, err = qkotel.New(qkotel.Options{MeterProvider: mp, TracerProvider: s.tp}); err != nil {
		t.Fatal(err)
	}
	return s
}

// collect returns each metric's value for topic: the sum of a counter or
// up-down counter, the count of a histogram, the last gauge value.
func (s *sdk) collect(t *testing.T, topic string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := s.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	want := attribute.String("messaging.destination.name", topic)
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					if has(p.Attributes, want) {
						out[m.Name] += p.Value
					}
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if has(p.Attributes, want) {
						out[m.Name] += int64(p.Count)
					}
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					if has(p.Attributes, want) {
						out[m.Name] = p.Value
					}
				}
			}
		}
	}
	return out
}

func has(set attribute.Set, kv attribute.KeyValue) bool {
	v, ok := set.Value(kv.Key)
	return ok && v == kv.Value
}

// Messages published through the wrapper and consumed through the
// middleware over a real broker: metrics add up, and every process span is a
// child of the send span — the W3C trace context went through the broker's
// headers.
func TestMetricsAndTraceOverBrokers(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		if !e.B.Capabilities().AttemptCount {
			t.Skip("unsupported: needs attempt counts")
		}
		s := newSDK(t)
		topic := e.Topic("otel")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		pub := s.tel.Publisher(e.Pub)
		var handled atomic.Int32
		h := s.tel.Middleware()(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if !trace.SpanContextFromContext(ctx).IsValid() {
				t.Error("the handler's context has no span")
			}
			if m.Attempt == 1 && m.ID[len(m.ID)-1] < '2' { // m-0 and m-1 fail once
				return errors.New("transient")
			}
			handled.Add(1)
			return nil
		}))
		var msgs []*broker.Message
		for i := range 10 {
			msgs = append(msgs, &broker.Message{ID: fmt.Sprint("m-", i)})
		}
		ctx, parent := s.tp.Tracer("test").Start(context.Background(), "request")
		if err := pub.Publish(ctx, topic, msgs...); err != nil {
			t.Fatal(err)
		}
		parent.End()
		stop := mwtest.Consume(t, sub, h, broker.ConsumeOptions{Concurrency: 2})
		mwtest.Eventually(t, 20*time.Second, func() bool { return handled.Load() == 10 }, "handled %d of 10", handled.Load())
		if err := stop(); err != nil {
			t.Fatal(err)
		}

		got := s.collect(t, topic)
		want := map[string]int64{
			"queuekit.messages.published": 10, "queuekit.messages.consumed": 12, "queuekit.messages.acked": 10,
			"queuekit.messages.nacked": 2, "queuekit.messages.retried": 2, "queuekit.messages.in_flight": 0,
			"queuekit.handler.duration": 12, "queuekit.message.age": 12,
		}
		for name, w := range want {
			if got[name] != w {
				t.Errorf("%s = %d, want %d (all: %v)", name, got[name], w, got)
			}
		}

		var send trace.SpanContext
		process := 0
		for _, sp := range s.spans.Ended() {
			switch sp.Name() {
			case "send " + topic:
				send = sp.SpanContext()
				if sp.SpanKind() != trace.SpanKindProducer || sp.Parent().SpanID() != parent.SpanContext().SpanID() {
					t.Errorf("send span kind %v parent %v", sp.SpanKind(), sp.Parent().SpanID())
				}
			}
		}
		for _, sp := range s.spans.Ended() {
			if sp.Name() != "process "+topic {
				continue
			}
			process++
			if sp.SpanKind() != trace.SpanKindConsumer || sp.Parent().TraceID() != send.TraceID() || sp.Parent().SpanID() != send.SpanID() || !sp.Parent().IsRemote() {
				t.Fatalf("process span %v (kind %v) is not a remote child of the send span %v", sp.Parent(), sp.SpanKind(), send)
			}
		}
		if process != 12 {
			t.Fatalf("%d process spans, want 12", process)
		}
	})
}

// The default stack instrumented: dead letters are counted.
func TestInstrumentCountsDeadLetters(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		s := newSDK(t)
		topic := e.Topic("otel-dlq")
		dead := e.Subscribe(t, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops"})
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic})
		var retries atomic.Int32
		opts := middleware.Options{Publisher: e.Pub, Store: dedupe.NewMemoryStore(dedupe.MemoryOptions{}),
			Retry: &retry.Options{MaxAttempts: 3, Initial: time.Millisecond, OnRetry: func(*broker.Message, int, error, time.Duration) { retries.Add(1) }}}
		s.tel.Instrument(&opts)
		h := middleware.Default(opts)(broker.HandlerFunc(func(context.Context, *broker.Message) error { return errors.New("poison") }))
		if st := middleware.Stages(h); st[0] != "otel" {
			t.Fatalf("stages %v: otel is not outermost", st)
		}
		e.Publish(t, topic, &broker.Message{ID: "p"})
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{})
		_ = mwtest.Receive(t, dead, 20*time.Second).Ack(context.Background())
		mwtest.Eventually(t, 5*time.Second, func() bool {
			got := s.collect(t, topic)
			return got["queuekit.messages.dead_lettered"] == 1 && got["queuekit.messages.acked"] == 1
		}, "dead letter not counted: %v", s.collect(t, topic))
		got := s.collect(t, topic)
		if got["queuekit.messages.retried"] != 2 || retries.Load() != 2 || got["queuekit.messages.acked"] != 1 {
			t.Fatalf("metrics %v, user OnRetry %d: want 2 in-process retries counted (and the user's hook kept), the dead-lettered delivery acked", got, retries.Load())
		}
	})
}

func TestObserveLag(t *testing.T) {
	s := newSDK(t)
	var depth atomic.Int64
	depth.Store(42)
	stop, err := s.tel.ObserveLag("orders", "billing", func(context.Context) (int64, error) { return depth.Load(), nil })
	if err != nil {
		t.Fatal(err)
	}
	if got := s.collect(t, "orders")["queuekit.consumer.lag"]; got != 42 {
		t.Fatalf("lag %d, want 42", got)
	}
	depth.Store(7)
	if got := s.collect(t, "orders")["queuekit.consumer.lag"]; got != 7 {
		t.Fatalf("lag %d, want 7", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestPublishFailuresCounted(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		s := newSDK(t)
		p, err := e.B.NewPublisher(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		_ = p.Close(context.Background())
		topic := e.Topic("otel-fail")
		if err := s.tel.Publisher(p).Publish(context.Background(), topic, &broker.Message{}, &broker.Message{}); err == nil {
			t.Fatal("publish on a closed publisher succeeded")
		}
		if got := s.collect(t, topic); got["queuekit.messages.publish_failed"] != 2 || got["queuekit.messages.published"] != 0 {
			t.Fatalf("metrics %v, want 2 failed", got)
		}
	})
}
