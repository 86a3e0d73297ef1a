package rabbitmq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// uniq returns a fresh name for a test's topics.
func uniq(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// cleanup collects the queues a test declares and deletes them at the end,
// so that the shared server does not fill up.
type cleanup struct {
	mu        sync.Mutex
	queues    map[string]bool
	exchanges []string
}

func (c *cleanup) add(q string) {
	c.mu.Lock()
	if c.queues == nil {
		c.queues = make(map[string]bool)
	}
	c.queues[q] = true
	c.mu.Unlock()
}

func (c *cleanup) run(t testing.TB, url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	queues := make([]string, 0, len(c.queues))
	for q := range c.queues {
		queues = append(queues, q)
	}
	testenv.DeleteRabbitMQ(t, url, queues, c.exchanges)
}

// openBroker dials the test server with opts (and params appended to the
// URL) and deletes every queue it declares when the test ends.
func openBroker(t testing.TB, params string, opts Options) *broker.Broker {
	t.Helper()
	url := testenv.RabbitMQ(t)
	c := &cleanup{}
	opts.OnDeclare = c.add
	if opts.Exchange != "" {
		// With the exchanges of scheduled delivery, which every group's
		// declaration makes.
		c.exchanges = append(c.exchanges, opts.Exchange,
			fitName(opts.Exchange, schedExchangeSuffix), fitName(opts.Exchange, schedRouterSuffix))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := url
	if params != "" {
		u += "?" + params
	}
	rb, err := Dial(ctx, u, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	b := broker.New(rb)
	t.Cleanup(func() {
		_ = b.Close(context.Background())
		c.run(t, url)
	})
	return b
}

// rabbit returns the adapter's Broker under b, for its admin methods.
func rabbit(t testing.TB, b *broker.Broker) *Broker {
	t.Helper()
	var rb *Broker
	if !b.As(&rb) {
		t.Fatalf("%v.As(*rabbitmq.Broker) = false", b)
	}
	return rb
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newPub(t testing.TB, b *broker.Broker) *broker.Publisher {
	t.Helper()
	p, err := b.NewPublisher(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func newSub(t testing.TB, b *broker.Broker, o broker.SubscriberOptions) *broker.Subscriber {
	t.Helper()
	s, err := b.NewSubscriber(ctxT(t, 10*time.Second), o)
	if err != nil {
		t.Fatalf("NewSubscriber: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func receive(t testing.TB, s *broker.Subscriber, within time.Duration) *broker.Delivery {
	t.Helper()
	d, err := s.Receive(ctxT(t, within))
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}
