package memory_test

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Benchmarks follow the repository convention: Benchmark<Thing>/queuekit
// against Benchmark<Thing>/channel, a plain buffered-channel pipeline doing
// the same work, each reporting msgs/s and allocs/msg. One b.N iteration is
// one message. Allocations count every goroutine of the pipeline (producer,
// broker, consumer), read from runtime.MemStats around the timed part.
//
//	go test -run '^$' -bench . -benchmem ./adapters/memory | go run ./internal/benchtable

const (
	benchPayload     = 64 // bytes per message
	benchConcurrency = 4  // handlers of the end-to-end pipelines
	benchBatch       = 64 // messages per Publish in the batch variants
	benchChanBuffer  = 4096
)

// meter measures msgs/s and allocs/msg over the timed part of a benchmark.
type meter struct {
	b      *testing.B
	before runtime.MemStats
}

func startMeter(b *testing.B) *meter {
	m := &meter{b: b}
	runtime.GC()
	runtime.ReadMemStats(&m.before)
	b.ResetTimer()
	return m
}

func (m *meter) stop() {
	m.b.StopTimer()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	n := float64(m.b.N)
	m.b.ReportMetric(n/m.b.Elapsed().Seconds(), "msgs/s")
	m.b.ReportMetric(float64(after.Mallocs-m.before.Mallocs)/n, "allocs/msg")
}

// drain acks everything published to topic until ctx is done, the way a
// fast consumer would, so that publishing never waits for room.
func drain(ctx context.Context, b broker.Broker, topic string) (wait func()) {
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic})
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]broker.Delivery, 256)
		br := sub.(broker.BatchReceiver)
		for {
			n, err := br.ReceiveBatch(ctx, buf)
			if err != nil {
				return
			}
			for _, d := range buf[:n] {
				d.Ack(ctx)
			}
		}
	}()
	return wg.Wait
}

// BenchmarkPublish measures Publish into a topic whose one group is being
// drained by a consumer, one message per call (single) or 64 (batch). The
// channel baseline sends the same messages into a buffered channel drained
// by a goroutine.
func BenchmarkPublish(b *testing.B) {
	for _, batch := range []int{1, benchBatch} {
		name := "single"
		if batch > 1 {
			name = "batch64"
		}
		b.Run(name+"/queuekit", func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			br := memory.New(memory.Options{})
			defer br.Close(ctx)
			wait := drain(ctx, br, "bench")
			pub, _ := br.NewPublisher(ctx)
			payload := make([]byte, benchPayload)
			ms := make([]*broker.Message, batch)
			for i := range ms {
				ms[i] = &broker.Message{}
			}
			m := startMeter(b)
			for sent := 0; sent < b.N; sent += batch {
				k := min(batch, b.N-sent)
				for _, msg := range ms[:k] {
					msg.ID, msg.Payload = "", payload // Publish copies: reuse is fine
				}
				if err := pub.Publish(ctx, "bench", ms[:k]...); err != nil {
					b.Fatal(err)
				}
			}
			m.stop()
			cancel()
			wait()
		})
		b.Run(name+"/channel", func(b *testing.B) {
			type msg struct {
				id      uint64
				payload []byte
			}
			ch := make(chan msg, benchChanBuffer)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range ch {
				}
			}()
			payload := make([]byte, benchPayload)
			m := startMeter(b)
			for i := 0; i < b.N; i++ {
				ch <- msg{id: uint64(i), payload: payload}
			}
			m.stop()
			close(ch)
			wg.Wait()
		})
	}
}

// BenchmarkEndToEnd measures publish -> broker.Consume (at-least-once,
// benchConcurrency handlers) -> ack: a producer goroutine publishes b.N
// messages one per call (or 64 per call in the batch variant) while Consume
// runs; the clock stops when Consume has acked them all. The channel
// baseline is producer goroutine -> buffered channel -> the same number of
// workers -> an ack counter.
func BenchmarkEndToEnd(b *testing.B) {
	b.Run("queuekit", func(b *testing.B) { benchEndToEnd(b, 1, 0) })
	b.Run("channel", benchEndToEndChannel)
}

// BenchmarkEndToEndBatch is BenchmarkEndToEnd with 64 messages per Publish.
func BenchmarkEndToEndBatch(b *testing.B) {
	b.Run("queuekit", func(b *testing.B) { benchEndToEnd(b, benchBatch, 0) })
	b.Run("channel", benchEndToEndChannel)
}

// BenchmarkEndToEndPerKey is BenchmarkEndToEnd with messages spread over
// 1024 keys and Consume keeping per-key order (the broker serialises each
// key too). The baseline keeps no order at all.
func BenchmarkEndToEndPerKey(b *testing.B) {
	b.Run("queuekit", func(b *testing.B) { benchEndToEnd(b, 1, 1024) })
	b.Run("channel", benchEndToEndChannel)
}

func benchEndToEnd(b *testing.B, batch, keys int) {
	ctx := context.Background()
	br := memory.New(memory.Options{})
	defer br.Close(ctx)
	sub, err := br.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	pub, _ := br.NewPublisher(ctx)
	payload := make([]byte, benchPayload)
	var handled atomic.Int64
	all := make(chan struct{})
	n := int64(b.N)
	h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if handled.Add(1) == n {
			close(all)
		}
		return nil
	})
	cctx, stop := context.WithCancel(ctx)
	m := startMeter(b)
	consumed := make(chan error, 1)
	go func() {
		opts := broker.ConsumeOptions{Concurrency: benchConcurrency}
		if keys > 0 {
			opts.Ordering = semantics.PerKey
		}
		consumed <- broker.Consume(cctx, sub, h, opts)
	}()
	go func() {
		ms := make([]*broker.Message, batch)
		for i := range ms {
			ms[i] = &broker.Message{}
		}
		names := make([]string, keys)
		for i := range names {
			names[i] = "key-" + strconv.Itoa(i)
		}
		for sent := 0; sent < b.N; sent += batch {
			k := min(batch, b.N-sent)
			for i, msg := range ms[:k] {
				msg.ID, msg.Payload = "", payload
				if keys > 0 {
					msg.Key = names[(sent+i)%keys]
				}
			}
			if err := pub.Publish(ctx, "bench", ms[:k]...); err != nil {
				panic(err)
			}
		}
	}()
	<-all
	stop()
	if err := <-consumed; err != nil {
		b.Fatal(err)
	}
	m.stop()
	if st, _ := br.Depth("bench", "default"); st.Depth() != 0 || st.Acked != uint64(b.N) {
		b.Fatalf("not everything was acked: %+v", st)
	}
}

func benchEndToEndChannel(b *testing.B) {
	type msg struct {
		id      uint64
		payload []byte
	}
	ch := make(chan msg, benchChanBuffer)
	var handled, acked atomic.Int64
	payload := make([]byte, benchPayload)
	m := startMeter(b)
	var wg sync.WaitGroup
	for range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range ch {
				handled.Add(1) // the handler
				acked.Add(1)   // the ack
			}
		}()
	}
	go func() {
		for i := 0; i < b.N; i++ {
			ch <- msg{id: uint64(i), payload: payload}
		}
		close(ch)
	}()
	wg.Wait()
	m.stop()
	if acked.Load() != int64(b.N) {
		b.Fatalf("acked %d of %d", acked.Load(), b.N)
	}
}
