package watermill_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchmeter"
)

// The bridge's own cost, both directions, end to end in one process: b.N
// messages of 256 B published 64 per call while one consumer acks each;
// the clock stops when all are acked. msgs/s and allocs/msg (all
// goroutines) are reported.
const (
	benchPayload = 256
	benchBatch   = 64
)

var benchBody = make([]byte, benchPayload)

// BenchmarkGoChannelBridge: a GoChannel used directly (range over the
// Subscribe channel and ack) against the same GoChannel through the bridge
// (queuekit Publish, broker.Consume with default options).
func BenchmarkGoChannelBridge(b *testing.B) {
	b.Run("watermill", func(b *testing.B) {
		gc := gochannel.NewGoChannel(gochannel.Config{}, wm.NopLogger{})
		defer gc.Close()
		ch, err := gc.Subscribe(context.Background(), "bench")
		if err != nil {
			b.Fatal(err)
		}
		var acked atomic.Int64
		done := make(chan struct{})
		go func() {
			for m := range ch {
				m.Ack()
				if acked.Add(1) == int64(b.N) {
					close(done)
				}
			}
		}()
		measure(b, done, func(n int) error {
			msgs := make([]*message.Message, n)
			for i := range msgs {
				msgs[i] = message.NewMessage(wm.NewUUID(), benchBody)
			}
			return gc.Publish("bench", msgs...)
		})
	})
	b.Run("queuekit", func(b *testing.B) {
		bk := broker.New(watermill.NewGoChannel(gochannel.NewGoChannel(gochannel.Config{}, wm.NopLogger{})))
		defer bk.Close(context.Background())
		consumeQueuekit(b, bk)
	})
}

// BenchmarkRouterSubscriber: queuekit's mem:// broker consumed with
// broker.Consume (raw) against the same broker consumed through the
// bridge's Watermill Subscriber, ranging over its channel and acking as a
// Router does (queuekit): the ratio is what the Watermill shape costs.
func BenchmarkRouterSubscriber(b *testing.B) {
	b.Run("raw", func(b *testing.B) {
		bk := broker.New(memory.New(memory.Options{}))
		defer bk.Close(context.Background())
		consumeQueuekit(b, bk)
	})
	b.Run("queuekit", func(b *testing.B) {
		bk := broker.New(memory.New(memory.Options{}))
		defer bk.Close(context.Background())
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s := watermill.NewSubscriber(bk, watermill.SubscriberConfig{Subscription: broker.SubscriberOptions{Group: "bench"}})
		defer s.Close()
		ch, err := s.Subscribe(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		pub, err := bk.NewPublisher(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var acked atomic.Int64
		done := make(chan struct{})
		go func() {
			for m := range ch {
				m.Ack()
				if acked.Add(1) == int64(b.N) {
					close(done)
				}
			}
		}()
		measure(b, done, func(n int) error { return pub.Publish(ctx, "bench", benchMessages(n)...) })
	})
}

func benchMessages(n int) []*broker.Message {
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Payload: benchBody}
	}
	return msgs
}

// consumeQueuekit measures bk with broker.Consume on topic "bench".
func consumeQueuekit(b *testing.B, bk *broker.Broker) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub, err := bk.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "bench", Group: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	pub, err := bk.NewPublisher(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var acked atomic.Int64
	done := make(chan struct{})
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			if acked.Add(1) == int64(b.N) {
				close(done)
			}
			return nil
		}), broker.ConsumeOptions{})
	}()
	measure(b, done, func(n int) error { return pub.Publish(ctx, "bench", benchMessages(n)...) })
	cancel()
	<-consumed
}

// measure publishes b.N messages with publish, n at a time, and waits for
// done; it reports msgs/s and allocs/msg.
func measure(b *testing.B, done <-chan struct{}, publish func(n int) error) {
	m := benchmeter.Start(b)
	for sent := 0; sent < b.N; sent += benchBatch {
		if err := publish(min(benchBatch, b.N-sent)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatal("not all acked")
	}
	m.Stop(b.N)
}
