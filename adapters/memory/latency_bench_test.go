package memory_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchlat"
)

// BenchmarkMemoryLatency: publish → handle p50/p99/p999 at half the maximum
// rate, measured the same way for every adapter (see internal/benchlat).
// The baseline, channel, is what the embedded broker stands in for in a
// single process: a buffered channel (benchChanBuffer) read by
// benchConcurrency goroutines, each message sent as it falls due. queuekit
// is benchlat.Queuekit over mem:// with its defaults.
func BenchmarkMemoryLatency(b *testing.B) {
	const group = "bench-latency"
	ctx := context.Background()
	mb := memory.New(memory.Options{})
	defer mb.Close(ctx)
	qb := broker.New(mb)
	templates := make([]*broker.Message, 1024)
	for i := range templates {
		templates[i] = &broker.Message{Key: "key-" + strconv.Itoa(i%16), Payload: make([]byte, benchPayload)}
	}
	var seq atomic.Int64
	newTopic := func() string {
		t := fmt.Sprint("bench-latency-", seq.Add(1))
		if err := qb.Declare(ctx, t, group); err != nil {
			b.Fatal(err)
		}
		return t
	}

	channel := func(_ string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		ch := make(chan []byte, benchChanBuffer)
		tr := benchlat.NewTracker(n, handled)
		for range benchConcurrency {
			go func() {
				for p := range ch {
					tr.Handle(p)
				}
			}()
		}
		defer close(ch)
		ch <- benchlat.Warmup
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		start := benchlat.OpenLoop(n, interval, benchBatch, func(from, to int, due func(int) time.Duration) {
			for i := from; i < to; i++ {
				ch <- benchlat.Stamp(templates[i%len(templates)].Payload, due(i))
			}
		})
		if err := tr.Wait(); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}

	benchlat.Bench(b, newTopic, benchlat.Options{Probe: 200000},
		benchlat.Variant{Name: "channel", Run: channel},
		benchlat.Variant{Name: "queuekit", Run: benchlat.Queuekit(qb, group, benchBatch, templates)})
}
