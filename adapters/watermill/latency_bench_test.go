package watermill_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchlat"
)

// BenchmarkGoChannelLatency: publish → handle p50/p99/p999 at half the
// maximum rate, measured the same way for every adapter (see
// internal/benchlat). watermill is a GoChannel used directly: one
// subscriber ranging over its channel and acking, every message that fell
// due published in one Publish call. queuekit is benchlat.Queuekit over
// the same kind of GoChannel through the bridge, with its defaults.
func BenchmarkGoChannelLatency(b *testing.B) {
	const group = "bench-latency"
	ctx := context.Background()
	bk := broker.New(watermill.NewGoChannel(gochannel.NewGoChannel(gochannel.Config{}, wm.NopLogger{})))
	defer bk.Close(ctx)
	templates := []*broker.Message{{Payload: benchBody}}
	var seq atomic.Int64
	newTopic := func() string {
		t := fmt.Sprint("bench-latency-", seq.Add(1))
		if err := bk.Declare(ctx, t, group); err != nil {
			b.Fatal(err)
		}
		return t
	}

	raw := func(topic string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		gc := gochannel.NewGoChannel(gochannel.Config{}, wm.NopLogger{})
		defer gc.Close()
		ch, err := gc.Subscribe(ctx, topic)
		if err != nil {
			return 0, err
		}
		tr := benchlat.NewTracker(n, handled)
		go func() {
			for m := range ch {
				tr.Handle(m.Payload)
				m.Ack()
			}
		}()
		if err := gc.Publish(topic, message.NewMessage(wm.NewUUID(), benchlat.Warmup)); err != nil {
			return 0, err
		}
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		var pubErr error
		start := benchlat.OpenLoop(n, interval, benchBatch, func(from, to int, due func(int) time.Duration) {
			msgs := make([]*message.Message, 0, to-from)
			for i := from; i < to; i++ {
				msgs = append(msgs, message.NewMessage(wm.NewUUID(), benchlat.Stamp(benchBody, due(i))))
			}
			if err := gc.Publish(topic, msgs...); err != nil && pubErr == nil {
				pubErr = err
			}
		})
		if pubErr != nil {
			return 0, pubErr
		}
		if err := tr.Wait(); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}

	benchlat.Bench(b, newTopic, benchlat.Options{Probe: 50000},
		benchlat.Variant{Name: "watermill", Run: raw},
		benchlat.Variant{Name: "queuekit", Run: benchlat.Queuekit(bk, group, benchBatch, templates)})
}
