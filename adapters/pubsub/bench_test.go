package pubsub_test

import (
	"context"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ps "cloud.google.com/go/pubsub/v2"
	"github.com/google/uuid"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	qpubsub "github.com/queuekit/queuekit/adapters/pubsub"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// The benchmarks run against a pstest server in its own process
// (testenv.PubSubServer) unless PUBSUB_EMULATOR_HOST points elsewhere, so the
// allocations and CPU time they report are the client's only. pstest pushes
// one message per stream every 10ms tick at best, so consuming measures
// mostly pstest; the raw and queuekit rows use the same client settings (8
// streams, SDK batching defaults) and put the same message on the wire
// (payload, one header, and the ID and publish-time attributes queuekit
// adds), so their ratio is the adapter's overhead.

const (
	benchPayload = 256
	benchBatch   = 100
	benchStreams = 8
)

// benchClient returns an SDK client for a fresh pstest server (or
// PUBSUB_EMULATOR_HOST's emulator) and the queuekit broker over it. A fresh
// server per run, because pstest keeps every message it was ever sent, and
// a heap grown by the previous run would slow down the next one.
func benchClient(b *testing.B) (*ps.Client, *qpubsub.Broker) {
	b.Helper()
	project, emulator := testenv.DefaultPubSubProject, ""
	if os.Getenv("PUBSUB_EMULATOR_HOST") != "" || os.Getenv("QUEUEKIT_PUBSUB_PROJECT") != "" {
		project, emulator = testenv.PubSub(b)
	} else {
		emulator = testenv.PubSubServer(b)
	}
	var copts []option.ClientOption
	if emulator != "" {
		copts = append(copts, option.WithEndpoint(emulator), option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	}
	c, err := ps.NewClient(context.Background(), project, copts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	qb, err := qpubsub.New(c, qpubsub.Options{Streams: benchStreams})
	if err != nil {
		b.Fatal(err)
	}
	return c, qb
}

// measure runs fn, which handles n messages, and reports msgs/s,
// allocs/msg and cpu-us/msg (of this process, not the server's; CPU time is
// steadier than wall time on a busy machine).
func measure(b *testing.B, n int, fn func()) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	cpu := cpuTime()
	start := time.Now()
	fn()
	elapsed := time.Since(start)
	cpu = cpuTime() - cpu
	b.StopTimer()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(n), "allocs/msg")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-us/msg")
	}
}

// producers publish concurrently in both publish rows, each in batches of
// benchBatch messages whose results it awaits, so that the rows measure
// work rather than the scheduling latency of one waiting goroutine.
const producers = 4

// split runs fn(count) on producers goroutines sharing n messages.
func split(b *testing.B, n int, fn func(count int) error) {
	var wg sync.WaitGroup
	errc := make(chan error, producers)
	for w := range producers {
		count := n / producers
		if w < n%producers {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(count); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkPubSubPublish(b *testing.B) {
	ctx := context.Background()
	payload := make([]byte, benchPayload)
	b.Run("raw", func(b *testing.B) {
		c, qb := benchClient(b)
		topic := name("bench-pub-raw")
		if err := qb.EnsureTopic(ctx, topic); err != nil {
			b.Fatal(err)
		}
		p := c.Publisher(topic)
		defer p.Stop()
		measure(b, b.N, func() {
			split(b, b.N, func(count int) error {
				results := make([]*ps.PublishResult, benchBatch)
				for i := 0; i < count; i += benchBatch {
					k := min(benchBatch, count-i)
					for j := range k {
						// The same message on the wire as queuekit's: an
						// ID and a publish time travel with the header.
						results[j] = p.Publish(ctx, &ps.Message{Data: payload, Attributes: map[string]string{
							"content-type":           "application/octet-stream",
							broker.HeaderID:          uuid.NewString(),
							broker.HeaderPublishedAt: time.Now().UTC().Format(time.RFC3339Nano),
						}})
					}
					for _, r := range results[:k] {
						if _, err := r.Get(ctx); err != nil {
							return err
						}
					}
				}
				return nil
			})
		})
	})
	b.Run("queuekit", func(b *testing.B) {
		_, qb := benchClient(b)
		topic := name("bench-pub-qk")
		p, err := qb.NewPublisher(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close(ctx)
		measure(b, b.N, func() {
			split(b, b.N, func(count int) error {
				msgs := make([]*broker.Message, benchBatch)
				for i := 0; i < count; i += benchBatch {
					k := min(benchBatch, count-i)
					for j := range k {
						msgs[j] = &broker.Message{Payload: payload, Headers: map[string]string{"content-type": "application/octet-stream"}}
					}
					if err := p.Publish(ctx, topic, msgs[:k]...); err != nil {
						return err
					}
				}
				return nil
			})
		})
	})
}

// fill creates topic and a subscription on it, then publishes n messages.
func fill(b *testing.B, qb *qpubsub.Broker, topic, sub string, n int) {
	b.Helper()
	ctx := context.Background()
	if _, err := qb.EnsureSubscription(ctx, qpubsub.SubscriptionConfig{Name: sub, Topic: topic}); err != nil {
		b.Fatal(err)
	}
	p, err := qb.NewPublisher(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(ctx)
	payload := make([]byte, benchPayload)
	for i := 0; i < n; i += benchBatch {
		var msgs []*broker.Message
		for range min(benchBatch, n-i) {
			msgs = append(msgs, &broker.Message{Payload: payload, Headers: map[string]string{"content-type": "application/octet-stream"}})
		}
		if err := p.Publish(ctx, topic, msgs...); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPubSubConsume(b *testing.B) {
	b.Run("raw", func(b *testing.B) {
		c, qb := benchClient(b)
		topic := name("bench-sub-raw")
		fill(b, qb, topic, qpubsub.DefaultSubscriptionName(topic, "default"), b.N)
		s := c.Subscriber(qpubsub.DefaultSubscriptionName(topic, "default"))
		s.ReceiveSettings.NumGoroutines = benchStreams
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var got atomic.Int64
		all := make(chan struct{})
		errc := make(chan error, 1)
		measure(b, b.N, func() {
			go func() {
				errc <- s.Receive(ctx, func(_ context.Context, m *ps.Message) {
					m.Ack()
					if got.Add(1) == int64(b.N) {
						close(all)
					}
				})
			}()
			<-all
		})
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	})
	b.Run("queuekit", func(b *testing.B) {
		_, qb := benchClient(b)
		topic := name("bench-sub-qk")
		fill(b, qb, topic, qpubsub.DefaultSubscriptionName(topic, "default"), b.N)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		sub, err := qb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close(context.Background())
		var got atomic.Int64
		all := make(chan struct{})
		errc := make(chan error, 1)
		h := broker.HandlerFunc(func(context.Context, *broker.Message) error {
			if got.Add(1) == int64(b.N) {
				close(all)
			}
			return nil
		})
		measure(b, b.N, func() {
			go func() { errc <- broker.Consume(ctx, sub, h, broker.ConsumeOptions{Concurrency: 16}) }()
			<-all
		})
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	})
}
