package watermill_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// newGoChannel returns a broker over a fresh GoChannel through the bridge,
// and the GoChannel, both closed at the end of the test.
func newGoChannel(t *testing.T) (*broker.Broker, *gochannel.GoChannel) {
	t.Helper()
	gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
	b := broker.New(watermill.NewGoChannel(gc))
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b, gc
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func subscribe(t *testing.T, b *broker.Broker, opts broker.SubscriberOptions) *broker.Subscriber {
	t.Helper()
	sub, err := b.NewSubscriber(ctxT(t), opts)
	if err != nil {
		t.Fatalf("NewSubscriber: %v", err)
	}
	t.Cleanup(func() { _ = sub.Close(context.Background()) })
	return sub
}

func receive(t *testing.T, sub *broker.Subscriber) *broker.Delivery {
	t.Helper()
	d, err := sub.Receive(ctxT(t))
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}

// A queuekit message published through the bridge arrives at a plain
// Watermill subscriber with its ID as UUID and its key, headers and publish
// time as metadata; a plain Watermill message arrives at a queuekit
// subscriber with its UUID as ID and its metadata as headers.
func TestMappingBothWays(t *testing.T) {
	b, gc := newGoChannel(t)
	ctx := ctxT(t)
	raw, err := gc.Subscribe(ctx, "out")
	if err != nil {
		t.Fatal(err)
	}
	var wb *watermill.Broker
	if !b.As(&wb) {
		t.Fatal("As(*watermill.Broker) = false")
	}
	wb.ConsumedOutside("out") // the raw subscription is not the bridge's
	pub, _ := b.NewPublisher(ctx)
	payload := []byte("body")
	m := &broker.Message{ID: "id-1", Key: "k-1", Payload: payload, Headers: map[string]string{"h": "v", "empty": ""}}
	if err := pub.Publish(ctx, "out", m); err != nil {
		t.Fatal(err)
	}
	payload[0] = 'X' // Publish copied it: GoChannel must not see this
	wm := <-raw
	wm.Ack()
	if wm.UUID != "id-1" || string(wm.Payload) != "body" {
		t.Errorf("watermill side: UUID %q payload %q", wm.UUID, wm.Payload)
	}
	want := map[string]string{"h": "v", "empty": "", watermill.MetadataKey: "k-1",
		broker.HeaderPublishedAt: m.PublishedAt.UTC().Format(time.RFC3339Nano)}
	if len(wm.Metadata) != len(want) {
		t.Errorf("metadata = %v, want %v", wm.Metadata, want)
	}
	for k, v := range want {
		if got, ok := wm.Metadata[k]; !ok || got != v {
			t.Errorf("metadata[%q] = %q, %v; want %q", k, got, ok, v)
		}
	}

	sub := subscribe(t, b, broker.SubscriberOptions{Topic: "in"})
	in := message.NewMessage("uuid-2", []byte("from watermill"))
	in.Metadata.Set("trace", "t-1")
	in.Metadata.Set(watermill.MetadataKey, "k-2")
	if err := gc.Publish("in", in); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub)
	got := d.Message()
	if got.ID != "uuid-2" || got.Key != "k-2" || got.Topic != "in" || string(got.Payload) != "from watermill" ||
		len(got.Headers) != 1 || got.Headers["trace"] != "t-1" || got.Attempt != 0 || !got.PublishedAt.IsZero() {
		t.Errorf("queuekit side: %+v", got)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// An unsettled delivery is nacked when its AckTimeout passes: GoChannel
// sends it again, and the late Ack of the first delivery fails with
// ErrExpired and does nothing.
func TestAckTimeoutNacks(t *testing.T) {
	b, _ := newGoChannel(t)
	ctx := ctxT(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: "t", AckTimeout: 50 * time.Millisecond})
	pub, _ := b.NewPublisher(ctx)
	if err := pub.Publish(ctx, "t", &broker.Message{ID: "m"}); err != nil {
		t.Fatal(err)
	}
	first := receive(t, sub)
	second := receive(t, sub) // comes only once the first was nacked
	if second.Message().ID != "m" {
		t.Fatalf("redelivered %q", second.Message().ID)
	}
	if err := first.Ack(ctx); !errors.Is(err, watermill.ErrExpired) {
		t.Errorf("late Ack = %v, want ErrExpired", err)
	}
	if err := first.Nack(ctx, 0); err != nil {
		t.Errorf("Nack after expiry = %v, want nil (it was nacked)", err)
	}
	if err := second.Ack(ctx); err != nil {
		t.Errorf("Ack of the redelivery: %v", err)
	}
}

// Settling is idempotent and never panics, whichever way it goes first.
func TestSettleTwice(t *testing.T) {
	b, _ := newGoChannel(t)
	ctx := ctxT(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: "t"})
	pub, _ := b.NewPublisher(ctx)
	if err := pub.Publish(ctx, "t", &broker.Message{ID: "a"}, &broker.Message{ID: "b"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		d := receive(t, sub)
		if d.Message().ID == "a" {
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			if err := d.Ack(ctx); err != nil {
				t.Errorf("second Ack = %v", err)
			}
			if err := d.Nack(ctx, 0); !errors.Is(err, broker.ErrAlreadySettled) {
				t.Errorf("Nack after Ack = %v", err)
			}
			continue
		}
		if err := d.Nack(ctx, time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := d.Nack(ctx, 0); err != nil {
			t.Errorf("second Nack = %v", err)
		}
		if err := d.Ack(ctx); !errors.Is(err, broker.ErrAlreadySettled) {
			t.Errorf("Ack after Nack = %v", err)
		}
	}
}

// Publish reports the Watermill publisher's failure per message: the one
// that failed with the cause, the rest as not attempted, as transient
// errors. Closed publishers and brokers refuse with ErrClosed.
func TestPublishErrors(t *testing.T) {
	b, gc := newGoChannel(t)
	ctx := ctxT(t)
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, "", &broker.Message{}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("empty topic: %v", err)
	}
	if err := b.Declare(ctx, "t", "g"); err != nil {
		t.Fatal(err)
	}
	_ = gc.Close() // the backend fails every Publish from now on
	err = pub.Publish(ctx, "t", &broker.Message{ID: "a"}, &broker.Message{ID: "b"})
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 2 || pe.Failed[0].ID != "a" || pe.Failed[1].Index != 1 {
		t.Fatalf("err = %v, want a PublishError naming a and b", err)
	}
	if broker.KindOf(err) != semantics.Transient {
		t.Errorf("kind = %v, want transient", broker.KindOf(err))
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, "t", &broker.Message{}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close = %v", err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.NewPublisher(ctx); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("NewPublisher after Close = %v", err)
	}
	if _, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "t"}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("NewSubscriber after Close = %v", err)
	}
}

// counting passes Publish calls on to a Watermill publisher, counting them.
type counting struct {
	message.Publisher
	calls atomic.Int32
}

func (c *counting) Publish(topic string, msgs ...*message.Message) error {
	c.calls.Add(1)
	return c.Publisher.Publish(topic, msgs...)
}

// A message over MaxMessageSize fails the whole batch before anything is
// handed to Watermill.
func TestOversizeRefusedBeforeIO(t *testing.T) {
	gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
	cp := &counting{Publisher: gc}
	wb, err := watermill.New(watermill.Options{Publisher: cp, Subscriber: gc, MaxMessageSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(wb)
	defer b.Close(context.Background())
	if b.Capabilities().MaxMessageSize != 10 || !b.Capabilities().DelayedNack || b.Capabilities().FanOut {
		t.Errorf("capabilities = %+v", b.Capabilities())
	}
	ctx := ctxT(t)
	pub, _ := b.NewPublisher(ctx)
	err = pub.Publish(ctx, "t", &broker.Message{Payload: []byte("ok")}, &broker.Message{Payload: make([]byte, 100)})
	if !errors.Is(err, broker.ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if n := cp.calls.Load(); n != 0 {
		t.Errorf("the Watermill publisher was called %d times for a refused batch", n)
	}
}

// The subscriber's Receive fails with kind Closed when the backend ends the
// subscription on its own, and with ErrClosed after Close.
func TestSubscriptionEnds(t *testing.T) {
	b, gc := newGoChannel(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: "t"})
	_ = gc.Close()
	_, err := sub.Receive(ctxT(t))
	if broker.KindOf(err) != semantics.Closed || errors.Is(err, broker.ErrClosed) {
		t.Errorf("Receive after the backend closed = %v, want a kind-closed error saying the subscription ended", err)
	}
	if err := sub.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Receive(ctxT(t)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Receive after Close = %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
	defer gc.Close()
	for name, o := range map[string]watermill.Options{
		"no publisher":  {Subscriber: gc},
		"no subscriber": {Publisher: gc},
		"negative size": {Publisher: gc, Subscriber: gc, MaxMessageSize: -1},
	} {
		if _, err := watermill.New(o); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s: err = %v, want invalid argument", name, err)
		}
	}
	wb, _ := watermill.New(watermill.Options{Publisher: gc, Subscriber: gc})
	b := broker.New(wb)
	if _, err := b.NewSubscriber(ctxT(t), broker.SubscriberOptions{}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("subscriber without topic: %v", err)
	}
}

// blocking holds each Publish until release is closed.
type blocking struct {
	message.Publisher
	entered chan struct{}
	release chan struct{}
}

func (p *blocking) Publish(topic string, msgs ...*message.Message) error {
	select {
	case p.entered <- struct{}{}:
	default:
	}
	<-p.release
	return p.Publisher.Publish(topic, msgs...)
}

// Closing a publisher waits, no longer than its ctx, for a Publish in
// progress, which then finishes its batch; later Publish calls are refused.
func TestPublisherCloseWaitsForPublish(t *testing.T) {
	gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
	bp := &blocking{Publisher: gc, entered: make(chan struct{}, 1), release: make(chan struct{})}
	wb, err := watermill.New(watermill.Options{Publisher: bp, Subscriber: gc})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(wb)
	defer b.Close(context.Background())
	ctx := ctxT(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: "t"})
	pub, _ := b.NewPublisher(ctx)
	published := make(chan error, 1)
	go func() { published <- pub.Publish(ctx, "t", &broker.Message{ID: "in-flight"}) }()
	<-bp.entered
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := pub.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with a Publish blocked in Watermill = %v, want it to wait until its ctx ends", err)
	}
	if err := pub.Publish(ctx, "t", &broker.Message{}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close = %v", err)
	}
	close(bp.release)
	if err := <-published; err != nil {
		t.Fatalf("the Publish in progress at Close: %v", err)
	}
	if d := receive(t, sub); d.Message().ID != "in-flight" {
		t.Errorf("got %s", d.Message().ID)
	}
}
