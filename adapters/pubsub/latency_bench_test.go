package pubsub_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	ps "cloud.google.com/go/pubsub/v2"

	qpubsub "github.com/queuekit/queuekit/adapters/pubsub"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchlat"
)

// BenchmarkPubSubLatency: publish → handle p50/p99/p999 at half the
// maximum rate, measured the same way for every adapter (see
// internal/benchlat), on a pstest server of its own.
//
// raw is cloud.google.com/go/pubsub/v2 at its best for latency:
// Subscriber.Receive with the default ReceiveSettings (as in
// BenchmarkPubSubConsume) running before the clock starts, acking in the
// callback; a Publisher whose DelayThreshold is 1µs rather than the
// default 10ms, which would hold every message that does not fill a batch
// for 10ms (messages handed over at the same instant still share a
// request), each message handed to it as it falls due, results checked at
// the end without holding anything back. It sends queuekit's ID and
// publish-time attributes. queuekit is benchlat.Queuekit with the
// adapter's defaults.
//
// pstest hands each stream one message per 10ms tick (see the benchmarks'
// package comment), so a subscriber with the default single stream takes
// about 90 msg/s, which sets the rate (about 45 msg/s) and half a tick of
// latency on average: the figures measure pstest's delivery loop first.
func BenchmarkPubSubLatency(b *testing.B) {
	const group = "bench-latency"
	c, qb := benchClient(b)
	ctx := context.Background()
	newTopic := func() string {
		t := name("bench-latency")
		if err := qb.Declare(ctx, t, []string{group}); err != nil {
			b.Fatal(err)
		}
		return t
	}
	payload := make([]byte, benchPayload)

	raw := func(topic string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		s := c.Subscriber(qpubsub.DefaultSubscriptionName(topic, group))
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		tr := benchlat.NewTracker(n, handled)
		received := make(chan error, 1)
		go func() {
			received <- s.Receive(rctx, func(_ context.Context, m *ps.Message) {
				tr.Handle(m.Data)
				m.Ack()
			})
		}()
		defer func() { cancel(); <-received }()
		p := c.Publisher(topic)
		p.EnableMessageOrdering = true // as queuekit's (keyless messages are not held by it)
		p.PublishSettings.DelayThreshold = time.Microsecond
		defer p.Stop()
		publish := func(data []byte) *ps.PublishResult {
			return p.Publish(ctx, &ps.Message{Data: data, Attributes: map[string]string{
				broker.HeaderID:          broker.NewID(),
				broker.HeaderPublishedAt: time.Now().UTC().Format(time.RFC3339Nano),
			}})
		}
		if _, err := publish(benchlat.Warmup).Get(ctx); err != nil {
			return 0, err
		}
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		var mu sync.Mutex
		results := make([]*ps.PublishResult, 0, n)
		start := benchlat.OpenLoop(n, interval, benchBatch, func(from, to int, due func(int) time.Duration) {
			for i := from; i < to; i++ {
				r := publish(benchlat.Stamp(payload, due(i)))
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		})
		if err := tr.Wait(); err != nil {
			return 0, err
		}
		d := time.Since(start)
		for _, r := range results {
			if _, err := r.Get(ctx); err != nil {
				return 0, fmt.Errorf("publish: %w", err)
			}
		}
		return d, nil
	}

	templates := []*broker.Message{{Payload: payload}}
	benchlat.Bench(b, newTopic, benchlat.Options{Probe: 300, Duration: 4 * time.Second},
		benchlat.Variant{Name: "raw", Run: raw},
		benchlat.Variant{Name: "queuekit", Run: benchlat.Queuekit(broker.New(qb), group, benchBatch, templates)})
}
