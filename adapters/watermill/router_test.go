package watermill_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/middleware/dedupe"
)

// A Watermill Router runs unchanged on queuekit's mem:// broker: its handler
// consumes through the bridge's Subscriber, publishes through its
// Publisher, and runs under queuekit middleware (dedupe) next to a Watermill
// one.
func TestRouterOnMemory(t *testing.T) {
	b := broker.New(memory.New(memory.Options{}))
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	testRouter(t, b, "qk-router-"+randomHex())
}

// The same Router over queuekit's RabbitMQ adapter (quorum queues).
func TestRouterOnRabbitMQ(t *testing.T) {
	url := testenv.RabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	var queues []string
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		testenv.DeleteRabbitMQ(t, url, queues, nil)
	})
	rb, err := rabbitmq.Dial(ctx, url, rabbitmq.Options{OnDeclare: func(q string) {
		mu.Lock()
		queues = append(queues, q)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(rb)
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	testRouter(t, b, "qk-router-"+randomHex())
}

// testRouter publishes n orders with queuekit, has a Router handler turn each
// into an invoice, and checks the invoices with a queuekit subscriber:
//
//   - every order gives exactly one invoice, with the order's key, its
//     headers passed on by a Watermill middleware, and an ID of its own;
//   - the first attempt of every third order fails: the Router nacks, the
//     broker redelivers, and the redelivery's metadata carries attempt 2;
//   - orders published again with the same IDs are skipped by queuekit's
//     dedupe middleware, so the handler runs once per order.
func testRouter(t *testing.T, b *broker.Broker, prefix string) {
	const n = 30
	in, out := prefix+"-in", prefix+"-out"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	check, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: out, Group: "check"})
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close(context.Background())

	qpub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer qpub.Close(context.Background())
	hpub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	runs := map[string]int{}       // handler runs per order ID
	attempts := map[string][]int{} // attempt metadata seen per order ID
	duplicates := make(chan string, n)
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wm.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	// Queuekit middleware inside a Watermill one that copies a header to
	// what the handler produces.
	router.AddMiddleware(passOn("tenant"))
	router.AddMiddleware(watermill.Middleware(dedupe.New(dedupe.NewMemoryStore(dedupe.MemoryOptions{}),
		dedupe.Options{OnDuplicate: func(m *broker.Message) { duplicates <- m.ID }})))
	router.AddHandler("invoice", in,
		watermill.NewSubscriber(b, watermill.SubscriberConfig{Subscription: broker.SubscriberOptions{Group: "router"}}),
		out, watermill.NewPublisher(hpub, 0),
		func(msg *message.Message) ([]*message.Message, error) {
			a, _ := strconv.Atoi(msg.Metadata.Get(broker.HeaderAttempt))
			mu.Lock()
			runs[msg.UUID]++
			attempts[msg.UUID] = append(attempts[msg.UUID], a)
			first := len(attempts[msg.UUID]) == 1
			mu.Unlock()
			if first && orderIndex(msg.UUID)%3 == 0 {
				return nil, errors.New("injected failure")
			}
			inv := message.NewMessage("", []byte("invoice for "+string(msg.Payload)))
			inv.Metadata.Set(watermill.MetadataKey, msg.Metadata.Get(watermill.MetadataKey))
			inv.Metadata.Set("order", msg.UUID)
			return []*message.Message{inv}, nil
		})
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(context.Background()) }()
	defer func() {
		if err := router.Close(); err != nil {
			t.Errorf("router Close: %v", err)
		}
		if err := <-runErr; err != nil {
			t.Errorf("router Run: %v", err)
		}
	}()
	select {
	case <-router.Running():
	case <-ctx.Done():
		t.Fatal("router did not start")
	}

	orders := make([]*broker.Message, n)
	for i := range orders {
		orders[i] = &broker.Message{ID: fmt.Sprintf("%s-order-%02d", prefix, i), Key: "customer-" + strconv.Itoa(i%4),
			Payload: []byte("order " + strconv.Itoa(i)), Headers: map[string]string{"tenant": "acme"}}
	}
	if err := qpub.Publish(ctx, in, orders...); err != nil {
		t.Fatal(err)
	}
	invoices := map[string]*broker.Message{} // by order ID
	for len(invoices) < n {
		d, err := check.Receive(ctx)
		if err != nil {
			t.Fatalf("after %d invoices: %v", len(invoices), err)
		}
		m := d.Message()
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		if prev, dup := invoices[m.Header("order")]; dup {
			t.Errorf("second invoice %s for order %s (first %s)", m.ID, m.Header("order"), prev.ID)
		}
		invoices[m.Header("order")] = m
	}
	for i, o := range orders {
		inv := invoices[o.ID]
		switch {
		case inv == nil:
			t.Errorf("no invoice for %s", o.ID)
		case inv.Key != o.Key || inv.Header("tenant") != "acme" || string(inv.Payload) != "invoice for order "+strconv.Itoa(i):
			t.Errorf("invoice for %s: key %q, headers %v, payload %q", o.ID, inv.Key, inv.Headers, inv.Payload)
		case inv.ID == "" || inv.ID == o.ID:
			t.Errorf("invoice for %s has ID %q, want a new one", o.ID, inv.ID)
		}
	}

	// The same orders again: dedupe skips every one without running the
	// handler.
	again := make([]*broker.Message, 3)
	for i := range again {
		again[i] = &broker.Message{ID: orders[i].ID, Key: orders[i].Key, Payload: orders[i].Payload}
	}
	if err := qpub.Publish(ctx, in, again...); err != nil {
		t.Fatal(err)
	}
	for range again {
		select {
		case <-duplicates:
		case <-ctx.Done():
			t.Fatal("the republished orders were not all seen as duplicates")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, o := range orders {
		want := 1
		if i%3 == 0 {
			want = 2
		}
		if runs[o.ID] != want {
			t.Errorf("handler ran %d times for %s, want %d", runs[o.ID], o.ID, want)
		}
		if a := attempts[o.ID]; len(a) == 2 && (a[0] != 1 || a[1] != 2) {
			t.Errorf("%s: attempts %v in metadata, want [1 2] (both adapters count deliveries)", o.ID, a)
		}
	}
}

// passOn is a plain Watermill middleware: it copies metadata entry name
// from the consumed message to the messages the handler produced.
func passOn(name string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			for _, m := range out {
				m.Metadata.Set(name, msg.Metadata.Get(name))
			}
			return out, err
		}
	}
}

func orderIndex(id string) int {
	n, _ := strconv.Atoi(id[len(id)-2:])
	return n
}

func randomHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
