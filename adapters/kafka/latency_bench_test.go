package kafka

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchlat"
)

// BenchmarkKafkaLatency: publish → handle p50/p99/p999 at half the
// maximum rate, measured the same way for every adapter (see
// internal/benchlat), on a plain kfake in its own process.
//
// raw publishes with rawProduceAll's client and settings, except that it
// does not linger (franz-go's default 10ms linger would add up to 10ms to
// every message, which no user who cares about latency keeps; queuekit
// does not linger either), each record handed to the client as it falls
// due, and consumes with rawConsumer (PollFetches, MarkCommitRecords,
// AutoCommitMarks). queuekit is benchlat.Queuekit with the adapter's
// defaults.
func BenchmarkKafkaLatency(b *testing.B) {
	const group = "bench-latency"
	addr := kfakeServer(b)
	ctx := context.Background()
	kb, err := New(ctx, Options{Brokers: []string{addr}})
	if err != nil {
		b.Skipf("kafka: %v", err)
	}
	defer kb.Close(ctx)
	qb := broker.New(kb)
	msgs := benchMessages(benchPool)
	keys := keysOf(msgs)
	var seq atomic.Int64
	newTopic := func() string {
		t := fmt.Sprint("bench-latency-", time.Now().UnixNano(), "-", seq.Add(1))
		if err := qb.Declare(ctx, t, group); err != nil {
			b.Fatal(err)
		}
		return t
	}

	raw := func(topic string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		cl, err := kgo.NewClient(append(rawProducerOpts(addr), kgo.ProducerLinger(0))...)
		if err != nil {
			return 0, err
		}
		defer cl.Close()
		cons := rawConsumer(b, addr, topic, group)
		defer cons.Close()
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		tr := benchlat.NewTracker(n, handled)
		polled := make(chan struct{})
		go func() {
			defer close(polled)
			for cctx.Err() == nil {
				rawPoll(cctx, cons, func(r *kgo.Record) { tr.Handle(r.Value) })
			}
		}()
		defer func() { cancel(); <-polled }()
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: benchlat.Warmup}).FirstErr(); err != nil {
			return 0, err
		}
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		var failed atomic.Int64
		promise := func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Add(1)
			}
		}
		start := benchlat.OpenLoop(n, interval, benchBatch, func(from, to int, due func(int) time.Duration) {
			for i := from; i < to; i++ {
				j := i % len(msgs)
				cl.Produce(ctx, &kgo.Record{Topic: topic, Key: keys[j], Value: benchlat.Stamp(msgs[j].Payload, due(i)),
					Headers: []kgo.RecordHeader{{Key: broker.HeaderID, Value: []byte(broker.NewID())}}}, promise)
			}
		})
		if err := tr.Wait(); err != nil {
			return 0, err
		}
		if failed.Load() > 0 {
			return 0, fmt.Errorf("%d records failed", failed.Load())
		}
		return time.Since(start), nil
	}

	benchlat.Bench(b, newTopic, benchlat.Options{},
		benchlat.Variant{Name: "raw", Run: raw},
		benchlat.Variant{Name: "queuekit", Run: benchlat.Queuekit(qb, group, benchBatch, msgs)})
}
