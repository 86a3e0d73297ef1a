// Package otel instruments queuekit with OpenTelemetry
// (go.opentelemetry.io/otel): metrics, tracing, and W3C trace context carried
// in message headers on every broker.
//
// A Telemetry gives a consumer middleware (Middleware), a publisher wrapper
// (Publisher) and hooks for the dlq and retry middleware. Import it under
// another name, as its package name is that of OpenTelemetry's API:
//
//	import qkotel "github.com/queuekit/queuekit/middleware/otel"
//
//	tel, err := qkotel.New(qkotel.Options{}) // global providers, W3C propagation
//	pub = tel.Publisher(pub)                 // injects traceparent into headers
//	opts := middleware.Options{Publisher: pub, Store: store}
//	tel.Instrument(&opts)                    // outermost, and counts dead letters
//	h := middleware.Default(opts)(handler)
//
// Metrics (attributes messaging.system and messaging.destination.name, the
// topic):
//
//	queuekit.messages.published     counter   messages Publish accepted
//	queuekit.messages.publish_failed counter  messages Publish did not
//	queuekit.messages.consumed      counter   deliveries handled (every attempt)
//	queuekit.messages.acked         counter   deliveries whose handler succeeded
//	queuekit.messages.nacked        counter   deliveries whose handler failed
//	queuekit.messages.retried       counter   redeliveries (Attempt > 1) and in-process retries
//	queuekit.messages.dead_lettered counter   messages the dlq middleware dead-lettered
//	queuekit.messages.in_flight     up-down   handlers running now
//	queuekit.handler.duration       histogram seconds per delivery, middleware inside included
//	queuekit.message.age            histogram seconds from publication to delivery (time lag)
//	queuekit.consumer.lag           gauge     messages waiting, where the adapter tells (ObserveLag)
//
// Tracing: Publisher starts a "send <topic>" producer span per call and
// injects its context into every message's headers (the traceparent and
// tracestate headers, plus baggage); Middleware extracts it and starts a
// "process <topic>" consumer span as its child, so one trace follows a
// message through any broker. Both ends must use the same propagator (W3C
// Trace Context by default).
package otel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/retry"
)

// ScopeName is the instrumentation scope of queuekit's meters and tracers.
const ScopeName = "github.com/queuekit/queuekit/middleware/otel"

// Options configure a Telemetry. The zero value uses the global providers
// and W3C Trace Context plus Baggage.
type Options struct {
	// MeterProvider defaults to otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// TracerProvider defaults to otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// Propagator carries trace context in headers; default W3C Trace
	// Context and Baggage (not the global propagator, which is a no-op
	// unless set).
	Propagator propagation.TextMapPropagator
	// System is the messaging.system attribute; default "queuekit".
	System string
}

// Telemetry holds the instruments. It is safe for concurrent use.
type Telemetry struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	system string

	published, publishFailed, consumed, acked, nacked, retried, deadLettered metric.Int64Counter
	inFlight                                                                 metric.Int64UpDownCounter
	duration, age                                                            metric.Float64Histogram
	meter                                                                    metric.Meter

	topics sync.Map // topic -> *topicAttrs
}

// topicAttrs are built once per topic: options passed as ready-made slices
// spare the hot path an allocation per call.
type topicAttrs struct {
	add           []metric.AddOption
	record        []metric.RecordOption
	process, send string
	processStart  []trace.SpanStartOption
	sendStart     []trace.SpanStartOption
}

// New creates the instruments.
func New(opts Options) (*Telemetry, error) {
	if opts.MeterProvider == nil {
		opts.MeterProvider = otel.GetMeterProvider()
	}
	if opts.TracerProvider == nil {
		opts.TracerProvider = otel.GetTracerProvider()
	}
	if opts.Propagator == nil {
		opts.Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	}
	if opts.System == "" {
		opts.System = "queuekit"
	}
	m := opts.MeterProvider.Meter(ScopeName)
	t := &Telemetry{tracer: opts.TracerProvider.Tracer(ScopeName), prop: opts.Propagator, system: opts.System, meter: m}
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit("{message}"))
		errs = append(errs, err)
		return c
	}
	t.published = counter("queuekit.messages.published", "Messages the broker accepted from Publish.")
	t.publishFailed = counter("queuekit.messages.publish_failed", "Messages Publish failed to send.")
	t.consumed = counter("queuekit.messages.consumed", "Deliveries handed to the handler, every attempt.")
	t.acked = counter("queuekit.messages.acked", "Deliveries whose handler succeeded.")
	t.nacked = counter("queuekit.messages.nacked", "Deliveries whose handler failed.")
	t.retried = counter("queuekit.messages.retried", "Redeliveries (attempt > 1) and in-process retries.")
	t.deadLettered = counter("queuekit.messages.dead_lettered", "Messages moved to a dead-letter topic by the dlq middleware.")
	var err error
	t.inFlight, err = m.Int64UpDownCounter("queuekit.messages.in_flight", metric.WithDescription("Handlers running now."), metric.WithUnit("{message}"))
	errs = append(errs, err)
	t.duration, err = m.Float64Histogram("queuekit.handler.duration", metric.WithDescription("Time to handle one delivery."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30))
	errs = append(errs, err)
	t.age, err = m.Float64Histogram("queuekit.message.age", metric.WithDescription("Time from publication to delivery."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("otel: creating instruments: %w", err)
	}
	return t, nil
}

func (t *Telemetry) attrs(topic string) *topicAttrs {
	if a, ok := t.topics.Load(topic); ok {
		return a.(*topicAttrs)
	}
	kv := []attribute.KeyValue{
		attribute.String("messaging.system", t.system),
		attribute.String("messaging.destination.name", topic),
	}
	set := metric.WithAttributeSet(attribute.NewSet(kv...))
	a := &topicAttrs{
		add:     []metric.AddOption{set},
		record:  []metric.RecordOption{set},
		process: "process " + topic,
		send:    "send " + topic,
		processStart: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(append(kv[:len(kv):len(kv)], attribute.String("messaging.operation.type", "process"))...)},
		sendStart: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(append(kv[:len(kv):len(kv)], attribute.String("messaging.operation.type", "send"))...)},
	}
	actual, _ := t.topics.LoadOrStore(topic, a)
	return actual.(*topicAttrs)
}

// Middleware returns the consumer middleware: put it outermost (see package
// middleware) so that it sees every delivery and its final outcome.
func (t *Telemetry) Middleware() broker.Middleware {
	return func(next broker.Handler) broker.Handler { return &handler{next: next, t: t} }
}

type handler struct {
	next broker.Handler
	t    *Telemetry
}

// Stage names this middleware for middleware.Check.
func (h *handler) Stage() string { return "otel" }

// Unwrap returns the handler it wraps.
func (h *handler) Unwrap() broker.Handler { return h.next }

func (h *handler) Handle(ctx context.Context, m *broker.Message) error {
	t := h.t
	a := t.attrs(m.Topic)
	if len(m.Headers) > 0 {
		ctx = t.prop.Extract(ctx, propagation.MapCarrier(m.Headers))
	}
	ctx, span := t.tracer.Start(ctx, a.process, a.processStart...)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.message.id", m.ID), attribute.Int("queuekit.attempt", m.Attempt))
	}
	start := time.Now()
	t.consumed.Add(ctx, 1, a.add...)
	if m.Attempt > 1 {
		t.retried.Add(ctx, 1, a.add...)
	}
	if !m.PublishedAt.IsZero() {
		t.age.Record(ctx, start.Sub(m.PublishedAt).Seconds(), a.record...)
	}
	t.inFlight.Add(ctx, 1, a.add...)
	err := h.next.Handle(ctx, m)
	t.inFlight.Add(ctx, -1, a.add...)
	t.duration.Record(ctx, time.Since(start).Seconds(), a.record...)
	if err != nil {
		t.nacked.Add(ctx, 1, a.add...)
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	} else {
		t.acked.Add(ctx, 1, a.add...)
	}
	span.End()
	return err
}

// Publisher wraps p: each Publish call runs in a "send <topic>" producer
// span whose context is injected into every message's headers (the
// caller's Message.Headers are written, as Publish writes its ID), and
// published / publish_failed are counted.
func (t *Telemetry) Publisher(p broker.Sender) broker.Sender {
	return &publisher{p: p, t: t}
}

type publisher struct {
	p broker.Sender
	t *Telemetry
}

func (p *publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	t := p.t
	a := t.attrs(topic)
	ctx, span := t.tracer.Start(ctx, a.send, a.sendStart...)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("messaging.batch.message_count", len(msgs)))
	}
	for _, m := range msgs {
		if m == nil {
			continue // Publish reports it
		}
		if m.Headers == nil {
			m.Headers = make(map[string]string, 2)
		}
		t.prop.Inject(ctx, propagation.MapCarrier(m.Headers))
	}
	err := p.p.Publish(ctx, topic, msgs...)
	failed := 0
	if err != nil {
		failed = len(msgs)
		var pe *broker.PublishError
		if errors.As(err, &pe) {
			failed = len(pe.Failed)
		}
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		t.publishFailed.Add(ctx, int64(failed), a.add...)
	}
	if ok := len(msgs) - failed; ok > 0 {
		t.published.Add(ctx, int64(ok), a.add...)
	}
	return err
}

// DeadLettered counts a dead letter; its signature fits
// dlq.Options.OnDeadLetter.
func (t *Telemetry) DeadLettered(m *broker.Message, _ error) {
	t.deadLettered.Add(context.Background(), 1, t.attrs(m.Topic).add...)
}

// Retried counts an in-process retry; its signature fits
// retry.Options.OnRetry in retry.InProcess mode. (In Redelivery mode the
// redelivery itself is counted, by its Attempt > 1.)
func (t *Telemetry) Retried(m *broker.Message, _ int, _ error, _ time.Duration) {
	t.retried.Add(context.Background(), 1, t.attrs(m.Topic).add...)
}

// Instrument sets o.Observe to Middleware and chains DeadLettered (and
// Retried, when o.Retry is set in InProcess mode) into o's hooks, for
// middleware.Default.
func (t *Telemetry) Instrument(o *middleware.Options) {
	o.Observe = t.Middleware()
	if user := o.DLQ.OnDeadLetter; user != nil {
		o.DLQ.OnDeadLetter = func(m *broker.Message, reason error) { t.DeadLettered(m, reason); user(m, reason) }
	} else {
		o.DLQ.OnDeadLetter = t.DeadLettered
	}
	if o.Retry != nil && o.Retry.Mode == retry.InProcess {
		r := *o.Retry
		if user := r.OnRetry; user != nil {
			r.OnRetry = func(m *broker.Message, n int, err error, d time.Duration) {
				t.Retried(m, n, err, d)
				user(m, n, err, d)
			}
		} else {
			r.OnRetry = t.Retried
		}
		o.Retry = &r
	}
}

// ObserveLag reports, at each collection, the messages waiting for group on
// topic as the queuekit.consumer.lag gauge; lag is asked then (an adapter's
// depth or lag API, such as a queue's message count). It returns a function
// that stops the reports.
func (t *Telemetry) ObserveLag(topic, group string, lag func(ctx context.Context) (int64, error)) (stop func() error, err error) {
	g, err := t.meter.Int64ObservableGauge("queuekit.consumer.lag", metric.WithDescription("Messages waiting to be consumed."), metric.WithUnit("{message}"))
	if err != nil {
		return nil, fmt.Errorf("otel: lag gauge: %w", err)
	}
	set := metric.WithAttributeSet(attribute.NewSet(
		attribute.String("messaging.system", t.system),
		attribute.String("messaging.destination.name", topic),
		attribute.String("messaging.consumer.group.name", group)))
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		n, err := lag(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(g, n, set)
		return nil
	}, g)
	if err != nil {
		return nil, fmt.Errorf("otel: lag callback: %w", err)
	}
	return reg.Unregister, nil
}
