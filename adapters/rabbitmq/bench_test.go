package rabbitmq

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/internal/testenv"
)

// The benchmarks pair Benchmark<Thing>/raw, amqp091 used the way a
// careful user writes it for throughput with the durability queuekit
// gives, with Benchmark<Thing>/queuekit, the adapter at its defaults (the
// benchmark sets nothing), which is what applications run with. Both
// variants run in the same process, one after the other, in every round.
// One b.N iteration is one 256-byte message into a quorum queue.
//
// The raw baselines are amqp091 at its recommended settings for
// throughput, not the adapter's:
//
//   - Publish (rawPublish): persistent, mandatory messages on a channel in
//     confirm mode, streamed from one goroutine with
//     PublishWithDeferredConfirm (amqp091's recommended confirm API) and a
//     window of rawConfirmWindow (1,000) unconfirmed messages, the
//     confirmations collected in order by a second goroutine that frees
//     the window's slots. Waiting for each confirm, or for a whole batch,
//     leaves the queue's Raft log idle between round trips; the window
//     keeps it busy (RabbitMQ's documentation: "publish in batches and
//     wait for confirms asynchronously"). Beyond ~1,000 no more came out
//     on this machine (see the sweep in the commit that set it).
//   - Consume (rawConsume): basic.qos prefetch rawPrefetch (1,000), manual
//     acks, and acks coalesced: every rawAckEvery-th (100th) delivery is
//     acked with multiple=true, acknowledging it and every earlier one,
//     and the last one is acked the same way at the end (the flush a real
//     consumer does when it goes idle). One ack frame per 100 messages
//     instead of one per message is the biggest single gain for a quorum
//     queue's consumer (RabbitMQ's documentation on consumer
//     acknowledgements: "multiple acknowledgements ... reduce network
//     traffic"); the handler does nothing, so this is the ceiling of an
//     at-least-once consumer.
//
// queuekit's Publish is package broker's Publisher (IDs, size checks,
// reserved headers) over the adapter's, from benchCallers goroutines
// publishing benchBatch messages per call (each call returns once all of
// its messages were confirmed), enough to keep any confirm window up to
// 2,048 full — many goroutines (request handlers, workers) each
// publishing a small batch and waiting for it is how applications share a
// publisher; its Consume is broker.Consume with its defaults (one handler
// at a time) over a subscriber with the adapter's default prefetch and
// ack coalescing. RabbitMQ itself is the bottleneck on a small machine,
// so the ratio shows what the adapter's bookkeeping and defaults cost on
// top of it; cpu-us/msg (this process's CPU per message) shows it with
// less noise from the other processes on the machine.
//
//	go test -run '^$' -bench Rabbit -benchmem -count 3 ./adapters/rabbitmq | go run ./internal/benchtable

const (
	benchPayload     = 256
	rawConfirmWindow = 1000 // raw: unconfirmed publishes
	rawPrefetch      = 1000 // raw: basic.qos
	rawAckEvery      = 100  // raw: deliveries per multiple ack
	benchCallers     = 64   // queuekit: concurrent Publish calls
	benchBatch       = 32   // queuekit: messages per Publish call
)

// Each reports msgs/s, allocs/msg and cpu-ns/msg (internal/benchmeter):
// this process's CPU time per message is steadier than wall time on a busy
// machine, and it is the adapter's own cost, the broker's being in
// another process; srv-cpu-ns/msg is RabbitMQ's (beam.smp).

// benchQueue declares a fresh quorum queue bound to a fresh topic on the
// default exchange, deleted when the benchmark ends.
func benchQueue(b *testing.B, conn *amqp.Connection) (topic string) {
	b.Helper()
	topic = uniq("bench")
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if err := ch.ExchangeDeclare(DefaultExchange, DefaultExchangeType, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	q := topic + ".default"
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": Quorum}); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(q, topic, DefaultExchange, false, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(q, false, false, false)
			ch.Close()
		}
	})
	return topic
}

// brokerIdle waits (at most 2 s) until RabbitMQ spent under 10% of a core
// over 100ms before a timed part starts, so that what the broker still
// does for the previous sub-benchmark (deleting its quorum queue of tens
// of thousands of messages, writing its WAL out) is not timed, nor its
// CPU counted in srv-cpu-ns/msg, in the next one: raw and queuekit run one
// after the other, and either would otherwise pay for the other.
func brokerIdle() {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		c0 := benchmeter.ProcessCPU("beam.smp")
		time.Sleep(100 * time.Millisecond)
		if c0 == 0 || benchmeter.ProcessCPU("beam.smp")-c0 < 10*time.Millisecond {
			return
		}
	}
}

func benchConn(b *testing.B) (*amqp.Connection, string) {
	url := testenv.RabbitMQ(b)
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn, url
}

func benchMessages(n int) []*broker.Message {
	msgs := make([]*broker.Message, n)
	payload := make([]byte, benchPayload)
	for i := range msgs {
		msgs[i] = &broker.Message{Key: fmt.Sprint(i % 16), Payload: payload}
	}
	return msgs
}

// rawPublish publishes msgs the way an amqp091 user streams with a confirm
// window: PublishWithDeferredConfirm from one goroutine, a second
// goroutine waiting for the confirmations in order and freeing a slot of
// the window (a semaphore of window slots) for each.
func rawPublish(b *testing.B, conn *amqp.Connection, topic string, msgs []*broker.Message, window int) {
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, window))
	sem := make(chan struct{}, window)
	dcs := make(chan *amqp.DeferredConfirmation, window)
	var nacked atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for dc := range dcs {
			if !dc.Wait() {
				nacked.Add(1)
			}
			<-sem
		}
	}()
	for _, m := range msgs {
		sem <- struct{}{}
		dc, err := ch.PublishWithDeferredConfirm(DefaultExchange, topic, true, false, publishing(m))
		if err != nil {
			b.Fatal(err)
		}
		dcs <- dc
	}
	close(dcs)
	<-done
	if nacked.Load() > 0 || len(returns) > 0 {
		b.Fatalf("raw publish: %d nacked, %d returned", nacked.Load(), len(returns))
	}
}

// rawConsume consumes n messages from queue with prefetch and manual
// acks, acking every ackEvery-th delivery with multiple=true (1: each
// delivery on its own) and the last one at the end.
func rawConsume(b *testing.B, conn *amqp.Connection, queue string, n, prefetch, ackEvery int) {
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Qos(prefetch, 0, false); err != nil {
		b.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		d, ok := <-deliveries
		if !ok {
			b.Fatalf("raw consume: deliveries ended after %d of %d", i-1, n)
		}
		if i%ackEvery == 0 || i == n {
			if err := d.Ack(ackEvery > 1); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// fill publishes n messages (with queuekit's wire format, for both
// consuming variants) before the timer starts.
func fill(b *testing.B, conn *amqp.Connection, topic string, n int) {
	b.StopTimer()
	rawPublish(b, conn, topic, benchMessages(n), rawConfirmWindow)
	b.StartTimer()
}

func BenchmarkRabbitPublish(b *testing.B) {
	b.Run("raw", func(b *testing.B) {
		conn, _ := benchConn(b)
		topic := benchQueue(b, conn)
		msgs := benchMessages(b.N)
		for _, m := range msgs {
			_ = driver.Prepare("bench", []*broker.Message{m}, 0)
		}
		brokerIdle()
		m := benchmeter.StartWithServer(b, "beam.smp")
		rawPublish(b, conn, topic, msgs, rawConfirmWindow)
		m.Stop(b.N)
	})
	b.Run("queuekit", func(b *testing.B) {
		conn, url := benchConn(b)
		topic := benchQueue(b, conn)
		rd, err := Dial(context.Background(), url, Options{})
		if err != nil {
			b.Fatal(err)
		}
		rb := broker.New(rd)
		defer rb.Close(context.Background())
		pub, err := rb.NewPublisher(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		defer pub.Close(context.Background())
		msgs := benchMessages(b.N)
		var next atomic.Int64
		var wg sync.WaitGroup
		brokerIdle()
		m := benchmeter.StartWithServer(b, "beam.smp")
		for range benchCallers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					end := int(next.Add(benchBatch))
					start := end - benchBatch
					if start >= len(msgs) {
						return
					}
					if err := pub.Publish(context.Background(), topic, msgs[start:min(end, len(msgs))]...); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		m.Stop(b.N)
	})
}

func BenchmarkRabbitConsume(b *testing.B) {
	b.Run("raw", func(b *testing.B) {
		conn, _ := benchConn(b)
		topic := benchQueue(b, conn)
		fill(b, conn, topic, b.N)
		brokerIdle()
		m := benchmeter.StartWithServer(b, "beam.smp")
		rawConsume(b, conn, topic+".default", b.N, rawPrefetch, rawAckEvery)
		m.Stop(b.N)
	})
	b.Run("queuekit", func(b *testing.B) {
		conn, url := benchConn(b)
		topic := benchQueue(b, conn)
		fill(b, conn, topic, b.N)
		rd, err := Dial(context.Background(), url, Options{})
		if err != nil {
			b.Fatal(err)
		}
		rb := broker.New(rd)
		defer rb.Close(context.Background())
		defer rd.DeleteTopic(context.Background(), topic) // and its topology registry
		brokerIdle()
		m := benchmeter.StartWithServer(b, "beam.smp")
		sub, err := rb.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: topic})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close(context.Background())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		var n atomic.Int64
		err = broker.Consume(ctx, sub, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			if int(n.Add(1)) == b.N {
				cancel()
			}
			return nil
		}), broker.ConsumeOptions{})
		if err != nil || int(n.Load()) < b.N {
			b.Fatalf("Consume: %v after %d of %d", err, n.Load(), b.N)
		}
		m.Stop(b.N)
	})
}
