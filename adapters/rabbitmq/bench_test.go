package rabbitmq

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// Benchmarks against raw amqp091 doing the same work in the same run:
// persistent, mandatory publishes with publisher confirms, at most
// benchWindow unconfirmed at once, into a quorum queue; consuming with
// prefetch benchPrefetch and one ack per message. One b.N iteration is one
// 256-byte message. RabbitMQ itself is the bottleneck on a small machine,
// so the ratio shows what the adapter's bookkeeping costs on top of it.
//
//	go test -run '^$' -bench Rabbit -benchmem ./adapters/rabbitmq | go run ./internal/benchtable

const (
	benchPayload  = 256
	benchWindow   = 256 // unconfirmed publishes
	benchPrefetch = 256
	benchBatch    = 16 // messages per Publish call, by 2*benchWindow/benchBatch callers: the window stays full
)

// meter reports msgs/s, allocs/msg and cpu-us/msg (this process's CPU
// time per message: on a busy machine it is steadier than wall time, and
// it is the adapter's own cost, the broker's being in another process).
type meter struct {
	b      *testing.B
	before runtime.MemStats
	cpu    time.Duration
}

func startMeter(b *testing.B) *meter {
	m := &meter{b: b}
	runtime.GC()
	runtime.ReadMemStats(&m.before)
	m.cpu = cpuTime()
	b.ResetTimer()
	return m
}

func (m *meter) stop() {
	m.b.StopTimer()
	cpu := cpuTime() - m.cpu
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	n := float64(m.b.N)
	m.b.ReportMetric(n/m.b.Elapsed().Seconds(), "msgs/s")
	m.b.ReportMetric(float64(after.Mallocs-m.before.Mallocs)/n, "allocs/msg")
	m.b.ReportMetric(float64(cpu.Microseconds())/n, "cpu-us/msg")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

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

// rawPublish publishes n messages the way an amqp091 user keeps a confirm
// window: PublishWithDeferredConfirm, a goroutine collecting confirmations in
// order, a semaphore of window slots.
func rawPublish(b *testing.B, conn *amqp.Connection, topic string, msgs []*broker.Message) {
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, benchWindow))
	sem := make(chan struct{}, benchWindow)
	dcs := make(chan *amqp.DeferredConfirmation, benchWindow)
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

func BenchmarkRabbitPublish(b *testing.B) {
	b.Run("raw", func(b *testing.B) {
		conn, _ := benchConn(b)
		topic := benchQueue(b, conn)
		msgs := benchMessages(b.N)
		for _, m := range msgs {
			_ = broker.Prepare("bench", []*broker.Message{m}, 0)
		}
		m := startMeter(b)
		rawPublish(b, conn, topic, msgs)
		m.stop()
	})
	b.Run("queuekit", func(b *testing.B) {
		conn, url := benchConn(b)
		topic := benchQueue(b, conn)
		rb, err := Dial(context.Background(), url, Options{ConfirmWindow: benchWindow})
		if err != nil {
			b.Fatal(err)
		}
		defer rb.Close(context.Background())
		pub, err := rb.NewPublisher(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		defer pub.Close(context.Background())
		msgs := benchMessages(b.N)
		var next atomic.Int64
		var wg sync.WaitGroup
		m := startMeter(b)
		for w := 0; w < 2*benchWindow/benchBatch; w++ {
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
		m.stop()
	})
}

func BenchmarkRabbitConsume(b *testing.B) {
	// fill publishes n messages (with queuekit's wire format, for both
	// variants) before the timer starts.
	fill := func(b *testing.B, conn *amqp.Connection, topic string) {
		b.StopTimer()
		rawPublish(b, conn, topic, benchMessages(b.N))
		b.StartTimer()
	}
	b.Run("raw", func(b *testing.B) {
		conn, _ := benchConn(b)
		topic := benchQueue(b, conn)
		fill(b, conn, topic)
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		defer ch.Close()
		if err := ch.Qos(benchPrefetch, 0, false); err != nil {
			b.Fatal(err)
		}
		m := startMeter(b)
		deliveries, err := ch.Consume(topic+".default", "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < b.N; i++ {
			d := <-deliveries
			if err := d.Ack(false); err != nil {
				b.Fatal(err)
			}
		}
		m.stop()
	})
	b.Run("queuekit", func(b *testing.B) {
		conn, url := benchConn(b)
		topic := benchQueue(b, conn)
		fill(b, conn, topic)
		rb, err := Dial(context.Background(), url, Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer rb.Close(context.Background())
		m := startMeter(b)
		sub, err := rb.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: topic, Prefetch: benchPrefetch})
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
		m.stop()
	})
}
