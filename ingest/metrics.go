package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the OpenTelemetry instrumentation scope of the Handler's
// meters.
const ScopeName = "github.com/queuekit/queuekit/ingest"

// Rejection reasons: the reason attribute of queuekit.ingest.rejected, the
// "error" field of an error response, and the reason of the access log.
const (
	ReasonMalformed    = "malformed"     // 400
	ReasonUnauthorized = "unauthorized"  // 401
	ReasonForbidden    = "forbidden"     // 403
	ReasonNotFound     = "not_found"     // 404: no such route, or the broker has no such topic
	ReasonMethod       = "method"        // 405
	ReasonTooLarge     = "too_large"     // 413
	ReasonRateLimited  = "rate_limited"  // 429
	ReasonFailed       = "failed"        // 500: the broker refused the message for good
	ReasonUnavailable  = "unavailable"   // 503: the broker failed or is down
	ReasonTimeout      = "timeout"       // 503: the broker did not answer within publish_timeout
	ReasonOverloaded   = "overloaded"    // 503: max_in_flight or max_delayed reached
	ReasonShuttingDown = "shutting_down" // 503: the handler is draining
	ReasonGone         = "client_gone"   // the client left while its request waited (no response)
)

// metrics are the handler's OpenTelemetry instruments.
type metrics struct {
	accepted metric.Int64Counter
	rejected metric.Int64Counter
	delayed  metric.Int64Counter
	inFlight metric.Int64UpDownCounter
	duration metric.Float64Histogram

	attrs [3]sync.Map // per attribute key (attrTopic, attrReason, attrOutcome): value -> *attrOpts
}

func newMetrics(mp metric.MeterProvider) (*metrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(ScopeName)
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	var err error
	x := &metrics{}
	x.accepted, err = m.Int64Counter("queuekit.ingest.accepted", metric.WithUnit("{message}"),
		metric.WithDescription("Messages the broker accepted through HTTP ingest."))
	add(err)
	x.rejected, err = m.Int64Counter("queuekit.ingest.rejected", metric.WithUnit("{request}"),
		metric.WithDescription("Publish requests answered with an error, by reason."))
	add(err)
	x.delayed, err = m.Int64Counter("queuekit.ingest.delayed", metric.WithUnit("{request}"),
		metric.WithDescription("Publish requests a rate limit delayed."))
	add(err)
	x.inFlight, err = m.Int64UpDownCounter("queuekit.ingest.in_flight", metric.WithUnit("{request}"),
		metric.WithDescription("Publish requests reading their body or publishing now."))
	add(err)
	x.duration, err = m.Float64Histogram("queuekit.ingest.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a publish request's arrival to its response, by outcome."),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	add(err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("ingest: creating instruments: %w", err)
	}
	return x, nil
}

type attrOpts struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

// opts returns the measurement options for one attribute, built once.
func (m *metrics) opts(key int, value string) *attrOpts {
	if o, ok := m.attrs[key].Load(value); ok {
		return o.(*attrOpts)
	}
	set := metric.WithAttributeSet(attribute.NewSet(attrKeys[key].String(value)))
	o, _ := m.attrs[key].LoadOrStore(value, &attrOpts{add: []metric.AddOption{set}, record: []metric.RecordOption{set}})
	return o.(*attrOpts)
}

const (
	attrTopic = iota
	attrReason
	attrOutcome
)

var attrKeys = [...]attribute.Key{
	attrTopic:   "messaging.destination.name",
	attrReason:  "reason",
	attrOutcome: "outcome",
}

// observe records one finished publish request.
func (m *metrics) observe(ctx context.Context, rec *record) {
	if rec.status >= 200 && rec.status < 300 {
		m.accepted.Add(ctx, int64(rec.msgs), m.opts(attrTopic, rec.topic).add...)
		m.duration.Record(ctx, rec.elapsed.Seconds(), m.opts(attrOutcome, "accepted").record...)
		return
	}
	m.rejected.Add(ctx, 1, m.opts(attrReason, rec.reason).add...)
	m.duration.Record(ctx, rec.elapsed.Seconds(), m.opts(attrOutcome, rec.reason).record...)
}
