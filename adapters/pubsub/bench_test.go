package pubsub_test

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	ps "cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/google/uuid"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	qpubsub "github.com/queuekit/queuekit/adapters/pubsub"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/internal/testenv"
)

// The benchmarks run against a pstest server in its own process
// (testenv.PubSubServer) unless PUBSUB_EMULATOR_HOST points elsewhere, so the
// allocations and CPU time they report are the client's only. raw is
// cloud.google.com/go/pubsub/v2 as Google advises for throughput; queuekit
// runs on the adapter's defaults (Options{}, broker.ConsumeOptions{}). Both
// put the same message on the wire (payload, one header, and the ID and
// publish-time attributes queuekit adds) with the same durability: a
// publish counts once its result said Pub/Sub accepted it, a message once
// it was handled and acked (the client sends acks in batches; a lost ack
// brings the message back).
//
//   - Publish: producers goroutines, each with batches of benchBatch
//     messages. raw hands a batch to one Publisher with the default
//     PublishSettings (the client batches by count, bytes and delay, and
//     publishes up to 25 x GOMAXPROCS requests at once) and waits for the
//     batch's results: concurrent Publish, results awaited, as Google's
//     samples do. queuekit Publishes each batch.
//   - Consume: raw is Subscriber.Receive with the default ReceiveSettings:
//     one StreamingPull stream (Google: each carries about 10 MB/s, and the
//     default suits most uses) and MaxOutstandingMessages 1000, far above
//     what a handler that acks at once ever holds. queuekit is
//     broker.Consume with its defaults over a subscriber with the
//     adapter's (the same stream and flow-control settings).
//
// pstest (v2.9.0) caps consuming, still with v2's streaming pull: every
// 10ms it offers each undelivered message to the subscription's streams
// over unbuffered channels, and a stream takes one message per tick, each
// sent in a response of its own. So a subscriber gets about 90 msg/s per
// stream (measured: 1 stream 90, 8 streams 630, 32 2,700, 64 6,000, 128
// 8,000), which the real service, which fills responses, does not impose.
// ConsumeStreams therefore runs both sides with consumeStreams streams
// (raw NumGoroutines, queuekit Options.Streams; everything else at its
// default) to measure the clients at a rate pstest does not decide alone.

const (
	benchPayload = 256
	benchBatch   = 100
	// consumeStreams lifts pstest's per-stream cap in ConsumeStreams.
	consumeStreams = 64
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
	qb, err := qpubsub.New(c, qpubsub.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return c, qb
}

// measure runs fn, which handles n messages, and reports benchmeter's
// figures: msgs/s, allocs/msg, cpu-ns/msg (of this process) and
// srv-cpu-ns/msg (pstest's, when it is the one pstestserver process).
func measure(b *testing.B, n int, fn func()) {
	m := benchmeter.StartWithServer(b, "pstestserver")
	fn()
	m.Stop(n)
}

// producers publish concurrently in both publish rows, each in batches of
// benchBatch messages whose results it awaits, so that the rows measure
// work rather than the scheduling latency of one waiting goroutine.
const producers = 4

// benchSubscription creates topic with the subscription queuekit needs to
// publish (ErrNoGroup without one), in both publish rows. Its filter
// matches no message: on every 10ms delivery tick pstest walks each
// message a subscription holds, under the lock Publish takes, so with a
// subscription that kept them the server would slow down as the run goes
// on — a run of 60,000 messages published at 0.55× the rate of a run of
// 15,000 — and a row's rate would depend on the b.N the benchmark
// framework picked for it. Filtered out, a message is dropped at the next
// tick; the server still receives, stores and acknowledges each one.
// Without message ordering: pstest also rebuilds a map of all the messages
// of an ordered subscription on every tick.
func benchSubscription(b *testing.B, c *ps.Client, topic string) {
	b.Helper()
	ctx := context.Background()
	full := "projects/" + c.Project() + "/topics/" + topic
	if _, err := c.TopicAdminClient.CreateTopic(ctx, &pb.Topic{Name: full}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.SubscriptionAdminClient.CreateSubscription(ctx, &pb.Subscription{
		Name:   "projects/" + c.Project() + "/subscriptions/" + qpubsub.DefaultSubscriptionName(topic, "bench"),
		Topic:  full,
		Filter: `attributes.bench = "never"`,
	}); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkPubSubPublish(b *testing.B) {
	ctx := context.Background()
	payload := make([]byte, benchPayload)
	b.Run("raw", func(b *testing.B) {
		c, _ := benchClient(b)
		topic := name("bench-pub-raw")
		benchSubscription(b, c, topic)
		p := c.Publisher(topic)
		defer p.Stop()
		measure(b, b.N, func() {
			benchmeter.Split(b, producers, b.N, func(count int) error {
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
		c, qb := benchClient(b)
		topic := name("bench-pub-qk")
		benchSubscription(b, c, topic)
		p, err := broker.New(qb).NewPublisher(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close(ctx)
		measure(b, b.N, func() {
			benchmeter.Split(b, producers, b.N, func(count int) error {
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
	p, err := broker.New(qb).NewPublisher(ctx)
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
	benchConsume(b, 0)
}

// BenchmarkPubSubConsumeStreams is BenchmarkPubSubConsume with
// consumeStreams streams on both sides: pstest serves each stream about
// 90 msg/s.
func BenchmarkPubSubConsumeStreams(b *testing.B) {
	benchConsume(b, consumeStreams)
}

// benchConsume consumes b.N messages from a filled subscription, raw and
// queuekit, with streams StreamingPull streams (0: the default, 1).
func benchConsume(b *testing.B, streams int) {
	b.Run("raw", func(b *testing.B) {
		c, qb := benchClient(b)
		topic := name("bench-sub-raw")
		fill(b, qb, topic, qpubsub.DefaultSubscriptionName(topic, "default"), b.N)
		s := c.Subscriber(qpubsub.DefaultSubscriptionName(topic, "default"))
		if streams > 0 {
			s.ReceiveSettings.NumGoroutines = streams
		}
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
		c, _ := benchClient(b)
		qb, err := qpubsub.New(c, qpubsub.Options{Streams: streams})
		if err != nil {
			b.Fatal(err)
		}
		topic := name("bench-sub-qk")
		fill(b, qb, topic, qpubsub.DefaultSubscriptionName(topic, "default"), b.N)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		sub, err := broker.New(qb).NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic})
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
			go func() { errc <- broker.Consume(ctx, sub, h, broker.ConsumeOptions{}) }()
			<-all
		})
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	})
}
