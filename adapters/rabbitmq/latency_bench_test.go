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
	"github.com/queuekit/queuekit/internal/benchlat"
)

// BenchmarkRabbitLatency: publish → handle p50/p99/p999 at half the
// maximum rate, measured the same way for every adapter (see
// internal/benchlat), into a quorum queue of the local RabbitMQ.
//
// raw is amqp091 with the throughput baselines' settings (see
// bench_test.go): persistent, mandatory messages on a confirm-mode
// channel, each sent with PublishWithDeferredConfirm as it falls due,
// with up to rawConfirmWindow unconfirmed (a second goroutine collects the
// confirmations in order and frees the window's slots); a consumer with
// prefetch rawPrefetch and manual acks, every rawAckEvery-th delivery
// acked with multiple=true, and whatever it has not acked yet acked the
// same way whenever it finds no delivery waiting (a consumer that acks
// only every 100th would hold a slow trickle's acks indefinitely; the
// flush costs one frame only when it is idle anyway). queuekit is
// benchlat.Queuekit with the adapter's defaults.
//
//	go test -run '^$' -bench RabbitLatency -count 3 ./adapters/rabbitmq | go run ./internal/benchtable
func BenchmarkRabbitLatency(b *testing.B) {
	const group = "bench-latency"
	conn, url := benchConn(b)
	ctx := context.Background()
	rd, err := Dial(ctx, url, Options{})
	if err != nil {
		b.Fatal(err)
	}
	qb := broker.New(rd)
	var (
		mu     sync.Mutex
		topics []string
		seq    atomic.Int64
	)
	b.Cleanup(func() {
		for _, t := range topics {
			_ = rd.DeleteTopic(ctx, t)
		}
		_ = qb.Close(ctx)
	})
	newTopic := func() string {
		t := fmt.Sprint(uniq("bench-latency"), "-", seq.Add(1))
		if err := qb.Declare(ctx, t, group); err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		topics = append(topics, t)
		mu.Unlock()
		return t
	}
	msgs := benchMessages(1024)

	raw := func(topic string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		tr := benchlat.NewTracker(n, handled)
		consumed, stop, err := rawLatencyConsumer(conn, rd.QueueName(topic, group), tr)
		if err != nil {
			return 0, err
		}
		defer func() { stop(); <-consumed }()
		pub, err := newRawPublisher(conn, rawConfirmWindow)
		if err != nil {
			return 0, err
		}
		defer pub.close()
		pub.publish(topic, amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: broker.NewID(), Body: benchlat.Warmup})
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		start := benchlat.OpenLoop(n, interval, benchBatch, func(from, to int, due func(int) time.Duration) {
			for i := from; i < to; i++ {
				pub.publish(topic, amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: broker.NewID(),
					Headers: amqp.Table{headerKey: msgs[i%len(msgs)].Key},
					Body:    benchlat.Stamp(msgs[i%len(msgs)].Payload, due(i))})
			}
		})
		if err := tr.Wait(); err != nil {
			return 0, err
		}
		d := time.Since(start)
		if err := pub.close(); err != nil {
			return 0, err
		}
		return d, nil
	}

	benchlat.Bench(b, newTopic, benchlat.Options{Probe: 30000},
		benchlat.Variant{Name: "raw", Run: raw},
		benchlat.Variant{Name: "queuekit", Run: benchlat.Queuekit(qb, group, benchBatch, msgs)})
}

// rawPublisher streams persistent, mandatory publishes with up to window
// unconfirmed, as rawPublish does, one message at a time as it falls due.
type rawPublisher struct {
	ch      *amqp.Channel
	returns chan amqp.Return
	sem     chan struct{}
	dcs     chan *amqp.DeferredConfirmation
	done    chan struct{}
	failed  atomic.Int64
	once    sync.Once
	err     error
}

func newRawPublisher(conn *amqp.Connection, window int) (*rawPublisher, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, err
	}
	p := &rawPublisher{
		ch:      ch,
		returns: ch.NotifyReturn(make(chan amqp.Return, window)),
		sem:     make(chan struct{}, window),
		dcs:     make(chan *amqp.DeferredConfirmation, window),
		done:    make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		for dc := range p.dcs {
			if !dc.Wait() {
				p.failed.Add(1)
			}
			<-p.sem
		}
	}()
	return p, nil
}

func (p *rawPublisher) publish(topic string, m amqp.Publishing) {
	p.sem <- struct{}{}
	dc, err := p.ch.PublishWithDeferredConfirm(DefaultExchange, topic, true, false, m)
	if err != nil {
		p.failed.Add(1)
		<-p.sem
		return
	}
	p.dcs <- dc
}

// close waits for every confirmation and closes the channel; it fails if
// a message was nacked, returned or not sent.
func (p *rawPublisher) close() error {
	p.once.Do(func() {
		close(p.dcs)
		<-p.done
		p.ch.Close()
		if n := p.failed.Load() + int64(len(p.returns)); n > 0 {
			p.err = fmt.Errorf("raw publish: %d messages not confirmed", n)
		}
	})
	return p.err
}

// rawLatencyConsumer consumes queue on a channel of its own with prefetch
// rawPrefetch, passing every payload to tr; it acks every rawAckEvery-th
// delivery with multiple=true, and what it has not acked yet whenever no
// delivery is waiting. stop cancels it; consumed is closed once it ended.
func rawLatencyConsumer(conn *amqp.Connection, queue string, tr *benchlat.Tracker) (consumed chan struct{}, stop func(), err error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, err
	}
	if err := ch.Qos(rawPrefetch, 0, false); err != nil {
		ch.Close()
		return nil, nil, err
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		ch.Close()
		return nil, nil, err
	}
	consumed = make(chan struct{})
	go func() {
		defer close(consumed)
		var last uint64 // the last delivery not acked yet, 0: none
		unacked := 0
		for {
			var (
				d  amqp.Delivery
				ok bool
			)
			select {
			case d, ok = <-deliveries:
			default:
				if last != 0 {
					_ = ch.Ack(last, true)
					last, unacked = 0, 0
				}
				d, ok = <-deliveries
			}
			if !ok {
				return
			}
			tr.Handle(d.Body)
			last = d.DeliveryTag
			if unacked++; unacked == rawAckEvery {
				_ = ch.Ack(last, true)
				last, unacked = 0, 0
			}
		}
	}()
	return consumed, func() { _ = ch.Close() }, nil
}
