package kafka

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/testenv"
)

var topicSeq atomic.Int64

// newTopic returns a fresh topic name for one test.
func newTopic(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		if r < 0x80 && legalNameByte(byte(r)) {
			return r
		}
		return '-'
	}, t.Name())
	return fmt.Sprintf("qk-%s-%d-%d", strings.ToLower(name), time.Now().UnixNano()%1e6, topicSeq.Add(1))
}

// testBroker opens a Broker on the test cluster with opts (Brokers filled
// in) and closes it when t ends.
func testBroker(t testing.TB, opts Options) *Broker {
	t.Helper()
	opts.Brokers = testenv.Kafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	b, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testQueuekit opens a Broker like testBroker and wraps it in package
// broker's user API (which closes it).
func testQueuekit(t testing.TB, opts Options) (*broker.Broker, *Broker) {
	t.Helper()
	opts.Brokers = testenv.Kafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	kb, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b := broker.New(kb)
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b, kb
}

// subscribe makes a subscriber closed when t ends.
func subscribe(t testing.TB, b *Broker, opts broker.SubscriberOptions) *Subscriber {
	t.Helper()
	s, err := b.Subscribe(testCtx(t, 15*time.Second), opts)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// publish publishes msgs through the driver, prepared the way package broker
// prepares them (but without its check that the topic has a group), and
// fails t on error.
func publish(t testing.TB, b *Broker, topic string, msgs ...*broker.Message) {
	t.Helper()
	pub, err := b.NewPublisher(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := driver.Prepare("test: publish", msgs, b.opts.MaxMessageBytes); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(testCtx(t, 15*time.Second), topic, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// numbered returns n messages with payloads "0".."n-1" and the given key.
func numbered(n int, key string) []*broker.Message {
	ms := make([]*broker.Message, n)
	for i := range ms {
		ms[i] = &broker.Message{Key: key, Payload: []byte(fmt.Sprint(i))}
	}
	return ms
}

// receive receives one delivery within d.
func receive(t testing.TB, s driver.Subscriber, d time.Duration) driver.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	dl, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return dl
}

// committed returns the group's committed offset of topic/partition, -1
// when none.
func committed(t testing.TB, b *Broker, topic, group string, part int32) int64 {
	t.Helper()
	offs, err := b.Admin().FetchOffsets(testCtx(t, 10*time.Second), group)
	if err != nil {
		t.Fatalf("FetchOffsets: %v", err)
	}
	if o, ok := offs.Lookup(topic, part); ok && o.Err == nil {
		return o.At
	}
	return -1
}

// waitCommitted polls the committed offset until it is want.
func waitCommitted(t testing.TB, b *Broker, topic, group string, part int32, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := committed(t, b, topic, group, part)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed offset of %s/%d is %d, want %d", topic, part, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
