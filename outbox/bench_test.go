package outbox_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/outbox"
)

// benchKeys is how many distinct keys the benchmark messages spread over.
const benchKeys = 1024

func benchMessages(n int) []*broker.Message {
	payload := make([]byte, 256)
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Key: fmt.Sprint("key-", i%benchKeys), Payload: payload}
	}
	return msgs
}

// BenchmarkOutbox compares, over RabbitMQ (publisher confirms), publishing
// messages directly (raw: 4 goroutines, 100 messages per Publish, as many
// as the relay's workers and batch) with a relay draining the same
// messages from an outbox (queuekit: default RelayOptions; the outbox is
// filled before the timer starts). msgs/s is messages durably accepted by
// the broker per second. cpu-ns/msg is the benchmark process's CPU per
// message, srv-cpu-ns/msg that of the servers: RabbitMQ, and for the
// relay the database too (every process named mariadbd, or postgres:
// backends that exit during the run are missed, the relay's stay).
func BenchmarkOutbox(b *testing.B) {
	for _, d := range databases {
		b.Run(d.name, func(b *testing.B) {
			e := openBroker(b, "rabbitmq")
			ctx := context.Background()
			topic := unique("qkbench_outbox")
			sub, err := e.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "bench"}) // routable; never consumed
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = sub.Close(ctx) })

			b.Run("raw", func(b *testing.B) {
				msgs := benchMessages(b.N)
				var next atomic.Int64
				m := benchmeter.StartWithServers(b, "beam.smp")
				var wg sync.WaitGroup
				for range outbox.DefaultWorkers {
					wg.Go(func() {
						for {
							end := int(next.Add(outbox.DefaultBatchSize))
							start := end - outbox.DefaultBatchSize
							if start >= len(msgs) {
								return
							}
							if err := e.pub.Publish(ctx, topic, msgs[start:min(end, len(msgs))]...); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				m.Stop(b.N)
			})

			b.Run("queuekit", func(b *testing.B) {
				db, ob := newOutbox(b, d, outbox.Options{})
				msgs := benchMessages(b.N)
				for i := 0; i < len(msgs); i += 500 {
					addTx(b, db, ob, topic, msgs[i:min(i+500, len(msgs))]...)
				}
				var published atomic.Int64
				done := make(chan struct{})
				counting := publisherFunc(func(ctx context.Context, topic string, ms ...*broker.Message) error {
					err := e.pub.Publish(ctx, topic, ms...)
					if err == nil && published.Add(int64(len(ms))) == int64(b.N) {
						close(done)
					}
					return err
				})
				r, err := outbox.NewRelay(ob, counting, outbox.RelayOptions{OnError: func(err error) { b.Log(err) }})
				if err != nil {
					b.Fatal(err)
				}
				rctx, stop := context.WithCancel(ctx)
				ran := make(chan error, 1)
				m := benchmeter.StartWithServers(b, "beam.smp", d.process)
				go func() { ran <- r.Run(rctx) }()
				<-done
				m.Stop(b.N)
				stop()
				if err := <-ran; err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkOutboxLatency measures, under a light steady load (one message
// every 2 ms), the time from handing a message over to receiving it from
// RabbitMQ: raw publishes it directly; queuekit commits it in a
// transaction's outbox, and the relay (default options: 4 workers polling
// every 100 ms when idle) publishes it. The difference of the two is the
// latency the outbox adds. Reported in milliseconds, p50 and p99.
func BenchmarkOutboxLatency(b *testing.B) {
	for _, d := range databases {
		b.Run(d.name, func(b *testing.B) {
			b.Run("raw", func(b *testing.B) {
				e := openBroker(b, "rabbitmq")
				benchLatency(b, e, func(ctx context.Context, topic string, m *broker.Message) error {
					return e.pub.Publish(ctx, topic, m)
				})
			})
			b.Run("queuekit", func(b *testing.B) {
				e := openBroker(b, "rabbitmq")
				db, ob := newOutbox(b, d, outbox.Options{})
				r, err := outbox.NewRelay(ob, e.pub, outbox.RelayOptions{OnError: func(err error) { b.Log(err) }})
				if err != nil {
					b.Fatal(err)
				}
				runRelay(b, r)
				benchLatency(b, e, func(ctx context.Context, topic string, m *broker.Message) error {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						return err
					}
					if err := ob.Add(ctx, tx, topic, m); err != nil {
						_ = tx.Rollback()
						return err
					}
					return tx.Commit()
				})
			})
		})
	}
}

func benchLatency(b *testing.B, e *brokerEnv, send func(ctx context.Context, topic string, m *broker.Message) error) {
	ctx := context.Background()
	topic := unique("qkbench_latency")
	sub, err := e.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close(ctx)
	sentAt := make([]time.Time, b.N)
	lat := make([]time.Duration, 0, b.N)
	var mu sync.Mutex
	all := make(chan struct{})
	cctx, cancel := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- broker.Consume(cctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			var i int
			fmt.Sscan(m.ID, &i)
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, now.Sub(sentAt[i]))
			if len(lat) == b.N {
				close(all)
			}
			return nil
		}), broker.ConsumeOptions{Concurrency: 4})
	}()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	b.ResetTimer()
	for i := range b.N {
		<-tick.C
		mu.Lock()
		sentAt[i] = time.Now()
		mu.Unlock()
		if err := send(ctx, topic, &broker.Message{ID: fmt.Sprint(i), Key: fmt.Sprint("key-", i%benchKeys), Payload: make([]byte, 256)}); err != nil {
			b.Fatal(err)
		}
	}
	<-all
	b.StopTimer()
	cancel()
	<-consumed
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
