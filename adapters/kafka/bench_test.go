package kafka

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// The benchmarks run kfake in a separate process (internal/testenv/kfakeserver)
// so that the broker's CPU is not charged to the client: a blackhole broker
// for publishing, a synthetic one (every fetch served from one canned batch
// of keyed records with a queuekit-id header) for consuming. raw is franz-go
// doing the same work with the same producer settings.

const (
	benchPayload = 256
	benchBatch   = 1000 // messages per Publish call / per raw produce round
)

// kfakeServer starts kfakeserver with args, returning its address; the
// benchmark is skipped when it cannot start.
func kfakeServer(b *testing.B, args ...string) string {
	b.Helper()
	srv, err := testenv.StartServer("kfakeserver", args...)
	if err != nil {
		b.Skipf("kfake server process unavailable: %v", err)
	}
	b.Cleanup(func() { _ = srv.Stop() })
	return srv.Addr
}

// benchMessages returns n messages of benchPayload bytes over 16 keys.
func benchMessages(n int) []*broker.Message {
	payload := make([]byte, benchPayload)
	ms := make([]*broker.Message, n)
	for i := range ms {
		ms[i] = &broker.Message{Key: fmt.Sprint("key-", i%16), Payload: payload}
	}
	return ms
}

// report records msgs/s and allocs/msg for n messages.
func report(b *testing.B, n int, before *runtime.MemStats) {
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(n), "allocs/msg")
}

func BenchmarkKafkaPublish(b *testing.B) {
	addr := kfakeServer(b, "-blackhole")
	ctx := context.Background()
	kb, err := New(ctx, Options{Brokers: []string{addr}})
	if err != nil {
		b.Skipf("kafka: %v", err)
	}
	defer kb.Close(ctx)
	topic := fmt.Sprint("bench-publish-", time.Now().UnixNano())
	if err := kb.EnsureTopic(ctx, topic); err != nil {
		b.Fatal(err)
	}

	b.Run("raw", func(b *testing.B) {
		cl, err := kgo.NewClient(kb.producerOpts()...)
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		msgs := benchMessages(benchBatch)
		keys := make([][]byte, len(msgs))
		for i, m := range msgs {
			keys[i] = []byte(m.Key)
		}
		recs := make([]kgo.Record, benchBatch)
		var wg sync.WaitGroup
		var failed atomic.Int64
		promise := func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Add(1)
			}
			wg.Done()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ResetTimer()
		for sent := 0; sent < b.N; {
			n := min(benchBatch, b.N-sent)
			wg.Add(n)
			for i := 0; i < n; i++ {
				recs[i] = kgo.Record{Topic: topic, Key: keys[i], Value: msgs[i].Payload,
					Headers: []kgo.RecordHeader{{Key: broker.HeaderID, Value: []byte(broker.NewID())}}}
				cl.Produce(ctx, &recs[i], promise)
			}
			wg.Wait()
			if failed.Load() > 0 {
				b.Fatalf("%d records failed", failed.Load())
			}
			sent += n
		}
		report(b, b.N, &ms)
	})

	b.Run("queuekit", func(b *testing.B) {
		pub, err := kb.NewPublisher(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer pub.Close(ctx)
		msgs := benchMessages(benchBatch)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ResetTimer()
		for sent := 0; sent < b.N; {
			n := min(benchBatch, b.N-sent)
			for _, m := range msgs[:n] {
				m.ID, m.PublishedAt = "", time.Time{} // a new message each time
			}
			if err := pub.Publish(ctx, topic, msgs[:n]...); err != nil {
				b.Fatal(err)
			}
			sent += n
		}
		report(b, b.N, &ms)
	})
}

// syntheticTopic starts a synthetic-fetch kfake server and returns a Broker
// on it, closed when b ends, and a topic on it.
func syntheticTopic(b *testing.B) (*Broker, string) {
	addr := kfakeServer(b, "-synthetic", "500", "-value-bytes", fmt.Sprint(benchPayload))
	ctx := context.Background()
	kb, err := New(ctx, Options{Brokers: []string{addr}})
	if err != nil {
		b.Skipf("kafka: %v", err)
	}
	b.Cleanup(func() { _ = kb.Close(ctx) })
	topic := fmt.Sprint("bench-consume-", time.Now().UnixNano())
	if err := kb.EnsureTopic(ctx, topic); err != nil {
		b.Fatal(err)
	}
	return kb, topic
}

// lastRawID keeps the ID rawConsume's handler saw last.
var lastRawID string

// rawConsume is franz-go doing by hand what the adapter does for a user,
// with the same client settings (the adapter's producer and consumer
// defaults: start offset, read_committed, 500ms fetch wait, rebalances only
// between polls, at most DefaultPrefetch records per poll) and the same
// per-record work: decode the queuekit-id header into a string, call the
// handler, and once the records of a poll are handled, mark the last of
// each partition for commit (franz-go's at-least-once idiom,
// kgo.AutoCommitMarks; one mark per partition rather than per record, as
// one in-order handler allows), committed every DefaultCommitInterval.
func rawConsume(b *testing.B, kb *Broker, topic, group string) {
	ctx := context.Background()
	opts := append(kb.producerOpts(), kb.consumerDefaults()...)
	opts = append(opts, kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.AutoCommitMarks(), kgo.AutoCommitInterval(DefaultCommitInterval))
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	for cl.PollFetches(ctx).NumRecords() == 0 { // joined and flowing
		cl.AllowRebalance()
	}
	cl.AllowRebalance()
	n := 0
	handler := func(id string) { n++; lastRawID = id } // a heap string, like Message.ID
	each := func(r *kgo.Record) {
		var id string
		for _, h := range r.Headers {
			if h.Key == broker.HeaderID {
				id = string(h.Value)
			}
		}
		handler(id)
	}
	mark := func(p kgo.FetchTopicPartition) { // in order: the last handled covers the rest
		if len(p.Records) > 0 {
			cl.MarkCommitRecords(p.Records[len(p.Records)-1])
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ResetTimer()
	for n < b.N {
		fs := cl.PollRecords(ctx, min(DefaultPrefetch, b.N-n))
		fs.EachRecord(each)
		fs.EachPartition(mark)
		cl.AllowRebalance()
	}
	b.StopTimer()
	if lastRawID == "" {
		b.Fatal("no record carried a queuekit-id header")
	}
	report(b, n, &ms)
}

// BenchmarkKafkaConsume measures what applications run. queuekit is
// broker.Consume with its defaults (one handler, run inline; at-least-once:
// Ack after the handler returns) over the adapter's Subscriber, whose
// poller decodes each record into a broker.Message (key, ID, headers) and
// tracks its offset so that only acknowledged offsets are committed, every
// DefaultCommitInterval. raw is rawConsume: franz-go calling the handler in
// its poll loop with the same settings and the same per-record work.
func BenchmarkKafkaConsume(b *testing.B) {
	kb, topic := syntheticTopic(b)
	ctx := context.Background()
	var round atomic.Int64

	b.Run("raw", func(b *testing.B) { rawConsume(b, kb, topic, fmt.Sprint("raw-", round.Add(1))) })

	b.Run("queuekit", func(b *testing.B) {
		sub, err := kb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: fmt.Sprint("qk-", round.Add(1))})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close(ctx)
		if d, err := sub.Receive(ctx); err != nil { // joined and flowing
			b.Fatal(err)
		} else {
			_ = d.Ack(ctx)
		}
		cctx, cancel := context.WithCancel(ctx)
		var n atomic.Int64
		target := int64(b.N)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ResetTimer()
		err = broker.Consume(cctx, sub, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			if n.Add(1) == target {
				cancel()
			}
			return nil
		}), broker.ConsumeOptions{ShutdownTimeout: time.Second})
		b.StopTimer()
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		report(b, int(n.Load()), &ms)
	})
}

// BenchmarkKafkaReceive measures the adapter alone: ReceiveBatch (64 at a
// time) and Ack in one loop, no Consume; raw is rawConsume as above.
func BenchmarkKafkaReceive(b *testing.B) {
	kb, topic := syntheticTopic(b)
	ctx := context.Background()
	b.Run("raw", func(b *testing.B) { rawConsume(b, kb, topic, fmt.Sprint("raw-", time.Now().UnixNano())) })
	b.Run("queuekit", func(b *testing.B) {
		sub, err := kb.Subscribe(ctx, broker.SubscriberOptions{Topic: topic, Group: fmt.Sprint("r-", time.Now().UnixNano())})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close(ctx)
		if d, err := sub.Receive(ctx); err != nil {
			b.Fatal(err)
		} else {
			_ = d.Ack(ctx)
		}
		buf := make([]broker.Delivery, 64)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ResetTimer()
		n := 0
		for n < b.N {
			k, err := sub.ReceiveBatch(ctx, buf)
			if err != nil {
				b.Fatal(err)
			}
			for _, d := range buf[:k] {
				_ = d.Ack(ctx)
			}
			n += k
		}
		report(b, n, &ms)
	})
}
