package batchbench_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// ConsumeBatch under PerKey over RabbitMQ, whose ordered consumer (single
// active consumer, with a prefetch) hands out many messages of one key at
// once: a key is never in two batches, and per-key order holds through
// failures retried in place.
func TestConsumeBatchPerKeyOverRabbitMQ(t *testing.T) {
	url := testenv.RabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	var queues []string
	rb, err := rabbitmq.Dial(ctx, url, rabbitmq.Options{OnDeclare: func(q string) {
		mu.Lock()
		queues = append(queues, q)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(rb)
	t.Cleanup(func() {
		_ = b.Close(context.Background())
		mu.Lock()
		defer mu.Unlock()
		testenv.DeleteRabbitMQ(t, url, queues, nil)
	})
	topic := fmt.Sprintf("batchbench-%08x", rand.Uint32())
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Ordering: semantics.PerKey})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := conformance.NewLedger()
	const n, keys = 600, 6
	ms := make([]*broker.Message, n)
	for i := range ms {
		ms[i] = &broker.Message{ID: fmt.Sprintf("m-%04d", i), Key: fmt.Sprintf("k-%d", i%keys), Payload: []byte("x")}
		l.Published(ms[i].ID, ms[i].Key)
	}
	if err := pub.Publish(ctx, topic, ms...); err != nil {
		t.Fatal(err)
	}

	var held sync.Map // key -> the batch handling it
	var handled, sameKey atomic.Int64
	all := make(chan struct{})
	h := func(ctx context.Context, ms []*broker.Message) []error {
		owner := new(int)
		perKey := map[string]int{}
		for _, m := range ms {
			if other, busy := held.LoadOrStore(m.Key, owner); busy && other != owner {
				t.Errorf("key %s in two batches at once", m.Key)
			}
			if perKey[m.Key]++; perKey[m.Key] == 2 {
				sameKey.Add(1)
			}
		}
		defer func() {
			for _, m := range ms {
				held.CompareAndDelete(m.Key, owner)
			}
		}()
		res := make([]error, len(ms))
		failed := map[string]bool{}
		for i, m := range ms {
			l.Delivered(m.ID)
			switch {
			case failed[m.Key]:
				res[i] = errors.New("an earlier message of the key failed")
			case m.Attempt < 3 && rand.IntN(20) == 0:
				failed[m.Key] = true
				res[i] = broker.RetryAfter(errors.New("later"), time.Millisecond)
			default:
				l.Handled(m.ID)
				if handled.Add(1) == n {
					close(all)
				}
			}
		}
		return res
	}
	cctx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		errc <- broker.ConsumeBatch(cctx, sub, broker.BatchHandlerFunc(h), broker.BatchOptions{
			MaxBatch: 32, MaxWait: 5 * time.Millisecond,
			ConsumeOptions: broker.ConsumeOptions{Concurrency: 3, OnError: func(*broker.Message, error) {}},
		})
	}()
	select {
	case <-all:
	case <-ctx.Done():
		t.Fatalf("not every message was handled: %v", l.Report())
	}
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if r := l.Report(); !r.OK() || r.Handled != n {
		t.Fatalf("ledger: %v", r)
	}
	if sameKey.Load() == 0 {
		t.Fatal("no batch held two messages of one key: the test did not test ordering within a batch")
	}
}
