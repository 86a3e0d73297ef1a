package redisstreams_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchlat"
)

// BenchmarkRedisStreamsLatency: publish → handle p50/p99/p999 at half the
// maximum rate, measured the same way for every adapter (see
// internal/benchlat), on the test server.
//
// raw is go-redis at its best for latency. Producer: what fell due at each
// tick goes at once in one pipeline of XADDs (queuekit's field layout, as
// in the throughput benchmarks), on a goroutine of its own so the generator
// never waits for Redis (up to benchlat.InFlight pipelines at once, as
// queuekit's variant has Publish calls), nothing held back to fill a
// batch. Consumer, running before the clock starts: one loop whose round
// trip is a pipeline of the XACK of the previous batch and XREADGROUP ...
// COUNT rawCount BLOCK > (a blocked XREADGROUP returns the moment an entry
// is added; its 100ms timeout only lets the loop see the end of the run),
// then the handler over the batch. queuekit is benchlat.Queuekit with the
// adapter's defaults. The probe is 100,000 messages (well under a second
// each at this server's rates).
func BenchmarkRedisStreamsLatency(b *testing.B) {
	const group = "bench-latency"
	ctx := context.Background()
	qb := openBroker(b)
	rb := driverOf(b, qb)
	c := rawClient(b)
	msgs := []*broker.Message{benchMessage(make([]byte, benchPayload))}
	newTopic := func() string {
		t := name("bench-latency")
		if err := qb.Declare(ctx, t, group); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = rb.DeleteTopic(context.Background(), t) })
		return t
	}

	raw := func(topic string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		st := stream(topic)
		tr := benchlat.NewTracker(n, handled)
		cctx, cancel := context.WithCancel(ctx)
		consumed := make(chan error, 1)
		go func() {
			var acks []string
			for cctx.Err() == nil {
				var read *redis.XStreamSliceCmd
				_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
					if len(acks) > 0 {
						p.XAck(ctx, st, group, acks...)
					}
					read = p.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: "raw", Streams: []string{st, ">"},
						Count: rawCount, Block: 100 * time.Millisecond})
					return nil
				})
				if err != nil && err != redis.Nil {
					consumed <- err
					return
				}
				acks = acks[:0]
				for _, s := range read.Val() {
					for _, m := range s.Messages {
						body, _ := m.Values["_body"].(string)
						tr.Handle([]byte(body))
						acks = append(acks, m.ID)
					}
				}
			}
			consumed <- nil
		}()
		defer func() { cancel(); <-consumed }()
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: st, Values: rawValues(benchlat.Warmup)}).Err(); err != nil {
			return 0, err
		}
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		var failed atomic.Int64
		var firstErr atomic.Pointer[error]
		var calls sync.WaitGroup
		inFlight := make(chan struct{}, benchlat.InFlight)
		start := benchlat.OpenLoop(n, interval, benchBatch, func(from, to int, due func(int) time.Duration) {
			values := make([][]any, 0, to-from)
			for i := from; i < to; i++ {
				values = append(values, rawValues(benchlat.Stamp(msgs[i%len(msgs)].Payload, due(i))))
			}
			inFlight <- struct{}{}
			calls.Add(1)
			go func() {
				defer calls.Done()
				defer func() { <-inFlight }()
				_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
					for _, v := range values {
						p.XAdd(ctx, &redis.XAddArgs{Stream: st, Values: v})
					}
					return nil
				})
				if err != nil && failed.Add(1) == 1 {
					firstErr.Store(&err)
				}
			}()
		})
		calls.Wait()
		if failed.Load() > 0 {
			return 0, fmt.Errorf("%d pipelines failed, the first with %w", failed.Load(), *firstErr.Load())
		}
		if err := tr.Wait(); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}

	benchlat.Bench(b, newTopic, benchlat.Options{Probe: 100000},
		benchlat.Variant{Name: "raw", Run: raw},
		benchlat.Variant{Name: "queuekit", Run: benchlat.Queuekit(qb, group, benchBatch, msgs)})
}
