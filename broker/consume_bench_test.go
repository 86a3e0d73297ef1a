package broker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/semantics"
)

// BenchmarkConsume measures Consume's own per-message cost, its dispatch:
// the driver below hands out the same ready deliveries over and over, as
// many at a time as asked, and its Ack does nothing, so that what remains
// is Consume's (receive loop, hand-out to the handlers, panic guard,
// settling through the Subscriber). End-to-end figures with a real adapter
// are the adapters' benchmarks (memory's BenchmarkEndToEnd, kafka's
// BenchmarkKafkaConsume). cpu-ns/msg is the figure a loaded machine
// disturbs least. Nothing allocates, so the GC never runs: with a
// real adapter, Consume's pointer writes cost more while it marks.
func BenchmarkConsume(b *testing.B) {
	for _, conc := range []int{1, 4} {
		for _, ord := range []semantics.Ordering{semantics.Unordered, semantics.PerKey} {
			b.Run(fmt.Sprintf("concurrency%d/%v", conc, ord), func(b *testing.B) {
				benchConsume(b, conc, ord)
			})
		}
	}
}

func benchConsume(b *testing.B, conc int, ord semantics.Ordering) {
	ctx := context.Background()
	fd := &freeDriver{}
	for i := range fd.ds {
		fd.ds[i] = &freeDelivery{msg: &broker.Message{ID: fmt.Sprint("m-", i), Key: fmt.Sprint("k-", i%64)}}
	}
	br := broker.New(fd)
	defer br.Close(ctx)
	sub, err := br.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "t", Ordering: ord})
	if err != nil {
		b.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var n atomic.Int64
	target := int64(b.N)
	m := benchmeter.Start(b)
	err = broker.Consume(cctx, sub, broker.HandlerFunc(func(context.Context, *broker.Message) error {
		if n.Add(1) == target {
			cancel()
		}
		return nil
	}), broker.ConsumeOptions{Concurrency: conc})
	m.Stop(int(n.Load()))
	if err != nil {
		b.Fatal(err)
	}
	if got := n.Load(); got < target {
		b.Fatalf("handled %d of %d", got, target)
	}
}

// freeDriver's subscriber always has deliveries ready: the same 256, in
// turn (Consume settles each once per delivery, and these keep no state).
type freeDriver struct {
	ds   [256]*freeDelivery
	next atomic.Uint64
}

func (f *freeDriver) Capabilities() semantics.Capabilities {
	return semantics.Capabilities{PerKeyOrdering: true, AttemptCount: true, DelayedNack: true}
}
func (f *freeDriver) NewPublisher(context.Context) (driver.Publisher, error) {
	return nil, fmt.Errorf("freeDriver publishes nothing")
}
func (f *freeDriver) NewSubscriber(context.Context, driver.SubscriberOptions) (driver.Subscriber, error) {
	return freeSub{f}, nil
}
func (f *freeDriver) Close(context.Context) error { return nil }

type freeSub struct{ f *freeDriver }

func (s freeSub) Receive(ctx context.Context) (driver.Delivery, error) {
	return s.f.ds[s.f.next.Add(1)%uint64(len(s.f.ds))], nil
}

func (s freeSub) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	start := s.f.next.Add(uint64(len(buf))) - uint64(len(buf))
	for i := range buf {
		buf[i] = s.f.ds[(start+uint64(i))%uint64(len(s.f.ds))]
	}
	return len(buf), nil
}

func (s freeSub) Close(context.Context) error { return nil }

type freeDelivery struct{ msg *broker.Message }

func (d *freeDelivery) Message() *broker.Message                  { return d.msg }
func (d *freeDelivery) Ack(context.Context) error                 { return nil }
func (d *freeDelivery) Nack(context.Context, time.Duration) error { return nil }
