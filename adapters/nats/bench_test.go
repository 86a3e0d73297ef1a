package nats

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/benchmeter"
)

// Benchmarks against raw nats.go/jetstream doing the same work in the same
// run, on the same server, into streams on file storage. One b.N iteration
// is one 256-byte message. Run them with
//
//	go test -run '^$' -bench NATS -benchmem -count 5 ./adapters/nats | go run ./internal/benchtable
//
// The queuekit rows use the adapter's defaults (the URL of the test server
// with no parameter): what a user gets. The raw rows are the best a careful
// nats.go user writes for throughput with the durability queuekit gives.
//
// Publish: every message stored and acknowledged by JetStream before the
// run ends. raw: PublishMsgAsync of every message from one goroutine, with
// rawPublishWindow messages awaiting their ack
// (WithPublishAsyncMaxPending; nats.go's own default is 4000 and a larger
// window measured no faster here: the server is the bottleneck), an error
// callback counting failures and PublishAsyncComplete at the end — the
// pattern jetstream's documentation recommends for throughput, and the
// fastest we measured (one goroutine: nats.go serialises publishes on the
// connection anyway) — with the payload only (BenchmarkNATSPublish) or with
// a UUID in a queuekit-id header too, the bytes queuekit sends
// (BenchmarkNATSPublishSameBytes). queuekit: Publish calls of benchBatch
// messages from benchCallers goroutines on one publisher, each returning
// once its messages are acknowledged.
//
// Consume: b.N messages stored beforehand, consumed by a durable pull
// consumer, one handler, and acknowledged. raw (BenchmarkNATSConsume): a
// consumer of its own with explicit acks and MaxAckPending rawMaxAckPending
// (so the server never holds deliveries back), Consume with
// PullMaxMessages(rawPull) — a pull of 1000 at a time, refilled at half,
// twice nats.go's default — and msg.Ack() in the handler: a per-message
// ack, which is what lets competing consumers of one group share it safely,
// as queuekit's groups do. raw (BenchmarkNATSConsumeAckAll): the same with
// an AckAll consumer acknowledging every rawPull/2-th message and the last
// one — the fewest acks there are, valid only because a single consumer
// handles in stream order (an AckAll ack also acks what other consumers of
// the group still hold, so queuekit, whose groups may have several
// subscribers and concurrent handlers, cannot use it): a bound, not a
// like-for-like baseline. queuekit: broker.Consume (defaults) on a
// subscriber with default options. All end when the last ack reached the
// server (a Flush).
//
// Besides msgs/s (wall clock, noisy on a shared machine) every row reports
// (internal/benchmeter) cpu-ns/msg, this process's CPU time per message,
// and srv-cpu-ns/msg, nats-server's (found by name in /proc; absent when
// not found): the server is the bottleneck, so the two together are the
// load-independent cost.
const (
	benchPayload     = 256
	benchBatch       = 512
	benchCallers     = 4
	rawPublishWindow = 4096
	rawPull          = 1000
	rawMaxAckPending = 20000
)

// benchTopic opens the broker with its defaults and declares a fresh
// topic with group "g"; its stream is deleted when b ends.
func benchTopic(b *testing.B) (*broker.Broker, *Broker, string) {
	prefix := uniq("qkbench")
	qb, nb := openBroker(b, prefix, "")
	if err := qb.Declare(context.Background(), prefix, "g"); err != nil {
		b.Fatal(err)
	}
	return qb, nb, prefix
}

func BenchmarkNATSPublish(b *testing.B) {
	b.Run("raw", func(b *testing.B) { rawPublish(b, false) })
	b.Run("queuekit", benchPublish)
}

// BenchmarkNATSPublishSameBytes is BenchmarkNATSPublish with a raw
// publisher that sends what queuekit sends: the payload and a UUID in a
// queuekit-id header — the cost of carrying an ID apart from the adapter's.
func BenchmarkNATSPublishSameBytes(b *testing.B) {
	b.Run("raw", func(b *testing.B) { rawPublish(b, true) })
	b.Run("queuekit", benchPublish)
}

func rawPublish(b *testing.B, withID bool) {
	payload := make([]byte, benchPayload)
	_, nb, topic := benchTopic(b)
	var failed atomic.Int64
	js, err := jetstream.New(nb.Conn(),
		jetstream.WithPublishAsyncMaxPending(rawPublishWindow),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *natsgo.Msg, error) { failed.Add(1) }))
	if err != nil {
		b.Fatal(err)
	}
	defer js.CleanupPublisher()
	m := benchmeter.StartWithServer(b, "nats-server")
	for range b.N {
		msg := &natsgo.Msg{Subject: topic, Data: payload}
		if withID {
			msg.Header = natsgo.Header{HeaderID: {driver.NewID()}}
		}
		for {
			_, err := js.PublishMsgAsync(msg)
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				continue // the window stayed full past the stall wait: try again
			}
			if err != nil {
				b.Fatal(err)
			}
			break
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("acks did not come")
	}
	m.Stop(b.N)
	if failed.Load() > 0 {
		b.Fatalf("%d publishes failed", failed.Load())
	}
}

func benchPublish(b *testing.B) {
	payload := make([]byte, benchPayload)
	qb, _, topic := benchTopic(b)
	ctx := context.Background()
	pub, err := qb.NewPublisher(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close(ctx)
	var next atomic.Int64
	m := benchmeter.StartWithServer(b, "nats-server")
	var wg sync.WaitGroup
	for range benchCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			batch := make([]*broker.Message, benchBatch)
			for {
				end := next.Add(benchBatch)
				start := end - benchBatch
				if start >= int64(b.N) {
					return
				}
				k := int(min(end, int64(b.N)) - start)
				for i := range batch[:k] {
					batch[i] = &broker.Message{Payload: payload}
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
}

// fill stores n messages in topic (not timed).
func fill(b *testing.B, nb *Broker, topic string, n int) {
	b.Helper()
	payload := make([]byte, benchPayload)
	p, err := nb.NewPublisher(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	// Through the adapter, so that both variants read messages with a
	// queuekit-id (what a queuekit consumer meets in production).
	const batch = 1000
	for sent := 0; sent < n; sent += batch {
		k := min(batch, n-sent)
		msgs := make([]*broker.Message, k)
		for i := range msgs {
			msgs[i] = &broker.Message{ID: strconv.Itoa(sent + i), Payload: payload}
		}
		if err := p.Publish(context.Background(), topic, msgs...); err != nil {
			b.Fatal(err)
		}
	}
	_ = p.Close(context.Background())
}

func BenchmarkNATSConsume(b *testing.B) {
	b.Run("raw", func(b *testing.B) { rawConsume(b, jetstream.AckExplicitPolicy) })
	b.Run("queuekit", benchConsume)
}

// BenchmarkNATSConsumeAckAll compares queuekit with a raw consumer that
// acks cumulatively (see the top of the file): a bound on what fewer acks
// would give, not the same guarantee for a shared group.
func BenchmarkNATSConsumeAckAll(b *testing.B) {
	b.Run("raw", func(b *testing.B) { rawConsume(b, jetstream.AckAllPolicy) })
	b.Run("queuekit", benchConsume)
}

func rawConsume(b *testing.B, policy jetstream.AckPolicy) {
	_, nb, topic := benchTopic(b)
	fill(b, nb, topic, b.N)
	cons, err := nb.JetStream().CreateConsumer(context.Background(), StreamName(topic), jetstream.ConsumerConfig{
		Durable: "raw", AckPolicy: policy, MaxAckPending: rawMaxAckPending, FilterSubject: topic})
	if err != nil {
		b.Fatal(err)
	}
	ackEvery := int64(1)
	if policy == jetstream.AckAllPolicy {
		ackEvery = rawPull / 2
	}
	var n atomic.Int64
	done := make(chan struct{})
	m := benchmeter.StartWithServer(b, "nats-server")
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		k := n.Add(1)
		if k%ackEvery == 0 || k == int64(b.N) {
			if err := msg.Ack(); err != nil {
				b.Error(err)
			}
		}
		if k == int64(b.N) {
			close(done)
		}
	}, jetstream.PullMaxMessages(rawPull))
	if err != nil {
		b.Fatal(err)
	}
	<-done
	if err := nb.Conn().Flush(); err != nil {
		b.Fatal(err)
	}
	m.Stop(b.N)
	cc.Stop()
}

func benchConsume(b *testing.B) {
	qb, nb, topic := benchTopic(b)
	fill(b, nb, topic, b.N)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub, err := qb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "g"})
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	h := broker.HandlerFunc(func(context.Context, *broker.Message) error {
		if n.Add(1) == int64(b.N) {
			cancel()
		}
		return nil
	})
	m := benchmeter.StartWithServer(b, "nats-server")
	if err := broker.Consume(ctx, sub, h, broker.ConsumeOptions{}); err != nil {
		b.Fatal(err)
	}
	if err := nb.Conn().Flush(); err != nil {
		b.Fatal(err)
	}
	m.Stop(b.N)
	_ = sub.Close(context.Background())
}
