package nats

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchlat"
)

// BenchmarkNATSLatency: publish → handle p50/p99/p999 at half the maximum
// rate, measured the same way for every adapter (see internal/benchlat),
// on the test server, streams on file storage.
//
// raw is nats.go at its best for latency: each message handed to
// PublishMsgAsync as it falls due (nothing waits to fill a batch; up to
// rawPublishWindow awaiting their acks, all awaited before the run ends, an
// error callback counting failures), and the group's durable pull consumer
// read with Consume(PullMaxMessages(rawPull)) — a pull always standing, so
// a message goes out as soon as it is stored — and msg.Ack() per message,
// the consumer running before the clock starts. queuekit is
// benchlat.Queuekit with the adapter's defaults. A probe of 30,000
// messages (about 0.3 s at this server's ~100k msgs/s) sets the rate.
func BenchmarkNATSLatency(b *testing.B) {
	const group = "bench-latency"
	prefix := uniq("qklat")
	qb, nb := openBroker(b, prefix, "")
	ctx := context.Background()
	msgs := []*broker.Message{{Payload: make([]byte, benchPayload)}}
	var seq atomic.Int64
	newTopic := func() string {
		t := fmt.Sprint(prefix, "-", seq.Add(1))
		if err := qb.Declare(ctx, t, group); err != nil {
			b.Fatal(err)
		}
		return t
	}

	raw := func(topic string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		var failed atomic.Int64
		js, err := jetstream.New(nb.Conn(),
			jetstream.WithPublishAsyncMaxPending(rawPublishWindow),
			jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *natsgo.Msg, error) { failed.Add(1) }))
		if err != nil {
			return 0, err
		}
		defer js.CleanupPublisher()
		cons, err := js.Consumer(ctx, StreamName(topic), group)
		if err != nil {
			return 0, err
		}
		tr := benchlat.NewTracker(n, handled)
		cc, err := cons.Consume(func(msg jetstream.Msg) {
			tr.Handle(msg.Data())
			_ = msg.Ack()
		}, jetstream.PullMaxMessages(rawPull))
		if err != nil {
			return 0, err
		}
		defer cc.Stop()
		if _, err := js.Publish(ctx, topic, benchlat.Warmup); err != nil {
			return 0, err
		}
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		start := benchlat.OpenLoop(n, interval, benchBatch, func(from, to int, due func(int) time.Duration) {
			for i := from; i < to; i++ {
				msg := &natsgo.Msg{Subject: topic, Data: benchlat.Stamp(msgs[i%len(msgs)].Payload, due(i))}
				for {
					_, err := js.PublishMsgAsync(msg)
					if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
						continue // the window stayed full past the stall wait: try again
					}
					if err != nil {
						failed.Add(1)
					}
					break
				}
			}
		})
		if err := tr.Wait(); err != nil {
			return 0, err
		}
		d := time.Since(start)
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			return 0, errors.New("publish acks did not come within a minute")
		}
		if failed.Load() > 0 {
			return 0, fmt.Errorf("%d publishes failed", failed.Load())
		}
		return d, nil
	}

	benchlat.Bench(b, newTopic, benchlat.Options{Probe: 30000},
		benchlat.Variant{Name: "raw", Run: raw},
		benchlat.Variant{Name: "queuekit", Run: benchlat.Queuekit(qb, group, benchBatch, msgs)})
}
