package memory_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/semantics"
)

// Benchmarks follow the repository convention: Benchmark<Thing>/queuekit
// against Benchmark<Thing>/channel, a plain buffered-channel pipeline doing
// the same work, each reporting msgs/s, allocs/msg and cpu-ns/msg
// (internal/benchmeter). One b.N iteration is one message. Allocations
// count every goroutine of the pipeline (producer, broker, consumer);
// cpu-ns/msg, the process's CPU time per message, is what a loaded
// machine disturbs least.
//
//	go test -run '^$' -bench . -benchmem ./adapters/memory | go run ./internal/benchtable

const (
	benchPayload     = 64 // bytes per message
	benchConcurrency = 4  // handlers of the end-to-end pipelines
	benchBatch       = 64 // messages per Publish in the batch variants
	benchChanBuffer  = 4096
)

// drain acks everything published to topic until ctx is done, the way a
// fast consumer would, so that publishing never waits for room.
func drain(ctx context.Context, b *memory.Broker, topic string) (wait func()) {
	// The driver's own subscriber, batched: the cheapest consumer there is.
	sub, err := b.NewSubscriber(ctx, driver.SubscriberOptions{Topic: topic, Group: "default"})
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]driver.Delivery, 256)
		br := sub.(driver.BatchReceiver)
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
			mb := memory.New(memory.Options{})
			br := broker.New(mb)
			defer br.Close(ctx)
			wait := drain(ctx, mb, "bench")
			pub, _ := br.NewPublisher(ctx)
			payload := make([]byte, benchPayload)
			ms := make([]*broker.Message, batch)
			for i := range ms {
				ms[i] = &broker.Message{}
			}
			m := benchmeter.Start(b)
			for sent := 0; sent < b.N; sent += batch {
				k := min(batch, b.N-sent)
				for _, msg := range ms[:k] {
					msg.ID, msg.Payload = "", payload // Publish copies: reuse is fine
				}
				if err := pub.Publish(ctx, "bench", ms[:k]...); err != nil {
					b.Fatal(err)
				}
			}
			m.Stop(b.N)
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
			m := benchmeter.Start(b)
			for i := 0; i < b.N; i++ {
				ch <- msg{id: uint64(i), payload: payload}
			}
			m.Stop(b.N)
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
//
// queuekit-unpaced is queuekit with Options.Pace -1: the publisher runs
// ahead of the handlers until the group holds Buffer messages (see
// "Backpressure" in the package doc).
func BenchmarkEndToEnd(b *testing.B) {
	b.Run("queuekit", func(b *testing.B) { benchEndToEnd(b, 1, 0) })
	b.Run("queuekit-unpaced", func(b *testing.B) { benchEndToEndWith(b, 1, 0, false, memory.Options{Pace: -1}) })
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

// BenchmarkEndToEndConsumeBatch is BenchmarkEndToEnd with ConsumeBatch
// (benchConcurrency batch handlers, default MaxBatch) in place of Consume;
// the handler counts the batch's messages and succeeds.
func BenchmarkEndToEndConsumeBatch(b *testing.B) {
	b.Run("queuekit", func(b *testing.B) { benchEndToEndWith(b, 1, 0, true, memory.Options{}) })
	b.Run("channel", benchEndToEndChannel)
}

func benchEndToEnd(b *testing.B, batch, keys int) {
	benchEndToEndWith(b, batch, keys, false, memory.Options{})
}

func benchEndToEndWith(b *testing.B, batch, keys int, consumeBatch bool, opts memory.Options) {
	ctx := context.Background()
	mb := memory.New(opts)
	br := broker.New(mb)
	defer br.Close(ctx)
	order := semantics.Unordered
	if keys > 0 {
		order = semantics.PerKey
	}
	sub, err := br.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "bench", Ordering: order})
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
	m := benchmeter.Start(b)
	consumed := make(chan error, 1)
	go func() {
		opts := broker.ConsumeOptions{Concurrency: benchConcurrency}
		if consumeBatch {
			bh := broker.BatchHandlerFunc(func(ctx context.Context, msgs []*broker.Message) []error {
				if handled.Add(int64(len(msgs))) == n {
					close(all)
				}
				return nil
			})
			consumed <- broker.ConsumeBatch(cctx, sub, bh, broker.BatchOptions{ConsumeOptions: opts})
			return
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
	m.Stop(b.N)
	if st, _ := mb.Depth("bench", "default"); st.Depth() != 0 || st.Acked != uint64(b.N) {
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
	m := benchmeter.Start(b)
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
	m.Stop(b.N)
	if acked.Load() != int64(b.N) {
		b.Fatalf("acked %d of %d", acked.Load(), b.N)
	}
}
