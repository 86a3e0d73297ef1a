package kafka

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/internal/testenv"
)

// The benchmarks pair Benchmark<Thing>/raw, franz-go used the best way a
// careful user would — franz-go's recommended settings for throughput,
// with the durability queuekit gives (acks from all in-sync replicas
// through the idempotent producer; offsets committed only for handled
// records) — with Benchmark<Thing>/queuekit, what applications run with
// the adapter's defaults. internal/benchtable turns the pairs into ratios:
//
//	go test -run '^$' -bench Kafka -benchmem -count 3 ./adapters/kafka | go run ./internal/benchtable
//
// kfake runs in a process of its own (internal/testenv/kfakeserver), so
// that the broker's CPU is not charged to the client: a blackhole broker
// for publishing, a synthetic one (every fetch served from one canned
// batch of keyed records with a queuekit-id header) for consuming, a plain
// one for latency. Payloads are random bytes (seeded, different for every
// message), as real payloads compress: all-zero payloads made compressing
// look free.
//
// Each reports (internal/benchmeter) msgs/s, allocs/msg (every goroutine
// of the process, franz-go's too), cpu-ns/msg, the process's CPU time per
// message, which other processes on a loaded machine disturb far less than
// msgs/s, and srv-cpu-ns/msg, kfake's. QUEUEKIT_BENCH_TRACE=<dir> writes
// an execution trace of each timed part to <dir>/<benchmark>.trace, for go
// tool trace.

const (
	benchPayload = 256
	benchBatch   = 1000 // messages per Publish call
	benchKeys    = 16
	benchPool    = 16384 // distinct messages a publishing benchmark cycles through
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

// benchMessages returns n messages over benchKeys keys, each with its own
// benchPayload random bytes, the same in every run.
func benchMessages(n int) []*broker.Message {
	rng := rand.New(rand.NewPCG(16, uint64(n)))
	payloads := make([]byte, n*benchPayload)
	for i := 0; i+8 <= len(payloads); i += 8 {
		binary.LittleEndian.PutUint64(payloads[i:], rng.Uint64())
	}
	ms := make([]*broker.Message, n)
	for i := range ms {
		ms[i] = &broker.Message{Key: "key-" + strconv.Itoa(i%benchKeys), Payload: payloads[i*benchPayload : (i+1)*benchPayload : (i+1)*benchPayload]}
	}
	return ms
}

// rawProducerOpts are franz-go's recommended producer settings — its
// defaults: acks from all in-sync replicas, the idempotent producer, 10ms
// linger, snappy compression, 1 MB batches, murmur2 for keyed records —
// against seed.
func rawProducerOpts(seed string) []kgo.Opt { return []kgo.Opt{kgo.SeedBrokers(seed)} }

// rawProduceAll produces msgs to topic the franz-go way for throughput:
// every record handed to the client asynchronously (Produce with a
// promise, no wait per record or per batch), the promises counting
// failures, then Flush, which returns once every record is acknowledged.
// Each record carries a queuekit-id header with a fresh ID, as queuekit's
// messages do.
func rawProduceAll(ctx context.Context, cl *kgo.Client, topic string, n int, msgs []*broker.Message, keys [][]byte) error {
	var failed atomic.Int64
	var first atomic.Pointer[error]
	promise := func(_ *kgo.Record, err error) {
		if err != nil && failed.Add(1) == 1 {
			first.Store(&err)
		}
	}
	for i := 0; i < n; i++ {
		j := i % len(msgs)
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: keys[j], Value: msgs[j].Payload,
			Headers: []kgo.RecordHeader{{Key: broker.HeaderID, Value: []byte(broker.NewID())}}}, promise)
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	if failed.Load() > 0 {
		return fmt.Errorf("%d records failed, the first with %w", failed.Load(), *first.Load())
	}
	return nil
}

// rawProduceSync produces msgs to topic the franz-go way for a caller that
// must know each batch is stored before it goes on (what every Publish call
// gives): ProduceSync of benchBatch records at a time, which, with
// franz-go's default linger, sends each call's records at once instead of
// waiting out the linger. Each record carries a queuekit-id header with a
// fresh ID, as queuekit's messages do.
func rawProduceSync(ctx context.Context, cl *kgo.Client, topic string, n int, msgs []*broker.Message, keys [][]byte) error {
	recs := make([]*kgo.Record, benchBatch)
	for sent := 0; sent < n; sent += benchBatch {
		k := min(benchBatch, n-sent)
		for i := range recs[:k] {
			j := (sent + i) % len(msgs)
			recs[i] = &kgo.Record{Topic: topic, Key: keys[j], Value: msgs[j].Payload,
				Headers: []kgo.RecordHeader{{Key: broker.HeaderID, Value: []byte(broker.NewID())}}}
		}
		if err := cl.ProduceSync(ctx, recs[:k]...).FirstErr(); err != nil {
			return err
		}
	}
	return nil
}

func keysOf(msgs []*broker.Message) [][]byte {
	keys := make([][]byte, len(msgs))
	for i, m := range msgs {
		keys[i] = []byte(m.Key)
	}
	return keys
}

// BenchmarkKafkaPublish: queuekit is package broker's Publisher (IDs,
// size check, reserved headers, the topic's group checked once) over the
// adapter's, with its defaults (no linger, no compression: see the package
// documentation), benchBatch messages per Publish call, each call
// returning once Kafka acknowledged all of them, from one goroutine
// (callers1) or four at once (callers4: a service publishing from its
// request handlers). raw runs next to each, franz-go at its recommended
// settings: for callers1 the same durability point — one goroutine whose
// every benchBatch records are acknowledged before it goes on, which is
// rawProduceSync; for callers4 the fastest producer there is, one that
// never waits (rawProduceAll: everything handed over asynchronously, one
// Flush at the end), which a caller that must know its batch is stored
// cannot be — a ceiling. (One waiting caller against that ceiling measured
// 0.70–0.74: while a call waits for its acks the caller sends nothing.)
func BenchmarkKafkaPublish(b *testing.B) {
	addr := kfakeServer(b, "-blackhole")
	ctx := context.Background()
	kb, err := New(ctx, Options{Brokers: []string{addr}})
	if err != nil {
		b.Skipf("kafka: %v", err)
	}
	defer kb.Close(ctx)
	topic := fmt.Sprint("bench-publish-", time.Now().UnixNano())
	qb := broker.New(kb)
	if err := qb.Declare(ctx, topic, "bench"); err != nil {
		b.Fatal(err)
	}
	msgs := benchMessages(benchPool)

	for _, callers := range []int{1, 4} {
		b.Run(fmt.Sprint("callers", callers), func(b *testing.B) {
			b.Run("raw", func(b *testing.B) {
				cl, err := kgo.NewClient(rawProducerOpts(addr)...)
				if err != nil {
					b.Fatal(err)
				}
				defer cl.Close()
				keys := keysOf(msgs)
				produce := rawProduceAll
				if callers == 1 {
					produce = rawProduceSync
				}
				m := benchmeter.StartWithServer(b, "kfakeserver")
				if err := produce(ctx, cl, topic, b.N, msgs, keys); err != nil {
					b.Fatal(err)
				}
				m.Stop(b.N)
			})
			b.Run("queuekit", func(b *testing.B) {
				pub, err := qb.NewPublisher(ctx)
				if err != nil {
					b.Fatal(err)
				}
				defer pub.Close(ctx)
				var next atomic.Int64
				var wg sync.WaitGroup
				m := benchmeter.StartWithServer(b, "kfakeserver")
				for range callers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						batch := make([]*broker.Message, benchBatch)
						for i := range batch {
							batch[i] = &broker.Message{}
						}
						for {
							sent := int(next.Add(benchBatch)) - benchBatch
							if sent >= b.N {
								return
							}
							k := min(benchBatch, b.N-sent)
							for i, msg := range batch[:k] {
								src := msgs[(sent+i)%len(msgs)]
								*msg = broker.Message{Key: src.Key, Payload: src.Payload} // a new message each time
							}
							if err := pub.Publish(ctx, topic, batch[:k]...); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				m.Stop(b.N)
			})
		})
	}
}

// syntheticTopic starts a synthetic-fetch kfake server and returns its
// address, a Broker on it, closed when b ends, and a topic on it.
func syntheticTopic(b *testing.B) (string, *Broker, string) {
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
	return addr, kb, topic
}

// rawConsumer is the best at-least-once consumer a careful franz-go user
// writes, at franz-go's recommended settings rather than the adapter's:
// PollFetches (everything buffered, so the client fetches the next batch
// while this one is handled), kgo's default fetch sizes (FetchMaxBytes
// 50 MiB, FetchMaxPartitionBytes 1 MiB) and fetch wait (5s), and
// at-least-once commits the franz-go way — once a poll's records are
// handled, MarkCommitRecords marks the last of each partition, and
// AutoCommitMarks commits the marks — with BlockRebalanceOnPoll, which the
// AutoCommitMarks documentation recommends so that no partition is revoked
// between handling and marking. Two settings follow the adapter because
// they are durability, not speed: the commit interval
// (DefaultCommitInterval: what a crash redelivers) and read_committed (no
// records of aborted transactions).
func rawConsumer(b *testing.B, addr, topic, group string) *kgo.Client {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(addr),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.BlockRebalanceOnPoll(),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(DefaultCommitInterval),
	)
	if err != nil {
		b.Fatal(err)
	}
	return cl
}

// rawPoll polls cl once, calls handle for every record in order, marks
// the handled records for commit and allows a rebalance again. It returns
// how many records it handled.
func rawPoll(ctx context.Context, cl *kgo.Client, handle func(*kgo.Record)) int {
	fs := cl.PollFetches(ctx)
	n := 0
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		for _, r := range p.Records {
			handle(r)
		}
		if k := len(p.Records); k > 0 {
			n += k
			cl.MarkCommitRecords(p.Records[k-1]) // handled in order: the last covers the rest
		}
	})
	cl.AllowRebalance()
	return n
}

// lastID keeps the ID a benchmark handler saw last: a handler that keeps
// nothing would let the compiler drop the work.
var lastID string

// rawConsume consumes b.N records with rawConsumer. Its handler does the
// least of what a handler of a queuekit message gets done for it: the
// queuekit-id header decoded into a string of its own. (The adapter also
// copies the key, decodes the other headers — the synthetic records have
// none — and tracks each offset until its ack.)
func rawConsume(b *testing.B, addr, topic, group string) {
	ctx := context.Background()
	cl := rawConsumer(b, addr, topic, group)
	defer cl.Close()
	for rawPoll(ctx, cl, func(*kgo.Record) {}) == 0 { // joined and flowing
	}
	handle := func(r *kgo.Record) {
		for _, h := range r.Headers {
			if h.Key == broker.HeaderID {
				lastID = string(h.Value)
			}
		}
	}
	m := benchmeter.StartWithServer(b, "kfakeserver")
	n := 0
	for n < b.N {
		n += rawPoll(ctx, cl, handle)
	}
	m.Stop(n)
	if lastID == "" {
		b.Fatal("no record carried a queuekit-id header")
	}
}

// BenchmarkKafkaConsume measures what applications run: broker.Consume
// over the adapter's Subscriber with its defaults (at-least-once: Ack after
// the handler returns; offsets committed up to the lowest un-acknowledged
// one every DefaultCommitInterval), one handler run inline (Concurrency 1,
// the default) or four. The subscriber decodes each record into a
// broker.Message (key, ID, headers) and tracks its offset. raw is
// rawConsume, run next to each so that every pair shares the machine's
// weather.
func BenchmarkKafkaConsume(b *testing.B) {
	addr, kb, topic := syntheticTopic(b)
	ctx := context.Background()
	var round atomic.Int64
	for _, conc := range []int{1, 4} {
		b.Run(fmt.Sprint("concurrency", conc), func(b *testing.B) {
			b.Run("raw", func(b *testing.B) { rawConsume(b, addr, topic, fmt.Sprint("raw-", round.Add(1))) })
			b.Run("queuekit", func(b *testing.B) {
				sub, err := broker.New(kb).NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: fmt.Sprint("qk-", round.Add(1))})
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
				defer cancel()
				var n atomic.Int64
				target := int64(b.N)
				m := benchmeter.StartWithServer(b, "kfakeserver")
				err = broker.Consume(cctx, sub, broker.HandlerFunc(func(_ context.Context, msg *broker.Message) error {
					lastID = msg.ID
					if n.Add(1) == target {
						cancel()
					}
					return nil
				}), broker.ConsumeOptions{Concurrency: conc, ShutdownTimeout: time.Second})
				m.Stop(int(n.Load()))
				if err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkKafkaReceive measures the adapter alone: ReceiveBatch (64 at a
// time) and Ack in one loop, no Consume; raw is rawConsume as above.
func BenchmarkKafkaReceive(b *testing.B) {
	addr, kb, topic := syntheticTopic(b)
	ctx := context.Background()
	var round atomic.Int64
	b.Run("raw", func(b *testing.B) { rawConsume(b, addr, topic, fmt.Sprint("raw-", round.Add(1))) })
	b.Run("queuekit", func(b *testing.B) {
		sub, err := kb.Subscribe(ctx, broker.SubscriberOptions{Topic: topic, Group: fmt.Sprint("r-", round.Add(1))})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close(ctx)
		if d, err := sub.Receive(ctx); err != nil {
			b.Fatal(err)
		} else {
			_ = d.Ack(ctx)
		}
		buf := make([]driver.Delivery, 64)
		m := benchmeter.StartWithServer(b, "kfakeserver")
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
		m.Stop(n)
	})
}
