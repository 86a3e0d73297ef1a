package watermill_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/semantics"
)

func newMemory(t *testing.T) *broker.Broker {
	b := broker.New(memory.New(memory.Options{}))
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

func next(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription channel closed")
		}
		return m
	case <-ctxT(t).Done():
		t.Fatal("no message")
	}
	return nil
}

// The Watermill publisher gives a message without UUID the queuekit ID it
// was published with, and turns metadata into key and headers.
func TestPublisherMapsAndAssignsUUID(t *testing.T) {
	b := newMemory(t)
	ctx := ctxT(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: "t"})
	qp, _ := b.NewPublisher(ctx)
	p := watermill.NewPublisher(qp, 0)
	m := message.NewMessage("", []byte("x"))
	m.Metadata.Set(watermill.MetadataKey, "k")
	m.Metadata.Set("h", "v")
	m.Metadata.Set(broker.HeaderAttempt, "7") // from an earlier delivery: not carried over
	if err := p.Publish("t", m); err != nil {
		t.Fatal(err)
	}
	if m.UUID == "" {
		t.Error("UUID not assigned")
	}
	d := receive(t, sub)
	got := d.Message()
	if got.ID != m.UUID || got.Key != "k" || got.Header("h") != "v" || got.Header(broker.HeaderAttempt) != "" || got.Attempt != 1 {
		t.Errorf("delivered %+v", got)
	}
	_ = d.Ack(ctx)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	err := p.Publish("t", message.NewMessage("", nil))
	if !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close = %v", err)
	}
}

// Nack redelivers with the next attempt in the metadata; a message not
// settled when the Subscriber closes is nacked after the close timeout and
// goes to the next subscriber of the group; Close closes the channels.
func TestSubscriberNackAndClose(t *testing.T) {
	b := newMemory(t)
	ctx := ctxT(t)
	s := watermill.NewSubscriber(b, watermill.SubscriberConfig{Subscription: broker.SubscriberOptions{Group: "g"},
		CloseTimeout: 50 * time.Millisecond})
	ch, err := s.Subscribe(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	qp, _ := b.NewPublisher(ctx)
	if err := qp.Publish(ctx, "t", &broker.Message{ID: "a", Key: "ka"}, &broker.Message{ID: "b", Key: "ka"}); err != nil {
		t.Fatal(err)
	}
	m := next(t, ch)
	if m.UUID != "a" || m.Metadata.Get(broker.HeaderAttempt) != "1" || m.Metadata.Get(watermill.MetadataKey) != "ka" {
		t.Fatalf("first message %s %v", m.UUID, m.Metadata)
	}
	m.Nack()
	select {
	case <-m.Context().Done(): // cancelled once settled, as Watermill's contract says
	case <-ctx.Done():
		t.Fatal("message context not cancelled after Nack")
	}
	// memory hands out one message of a key at a time, in order: the
	// redelivery of a comes before b.
	m = next(t, ch)
	if m.UUID != "a" || m.Metadata.Get(broker.HeaderAttempt) != "2" {
		t.Fatalf("after Nack: %s %v", m.UUID, m.Metadata)
	}
	m.Ack()
	held := next(t, ch) // b, never settled
	if held.UUID != "b" {
		t.Fatalf("got %s", held.UUID)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-ch; ok {
		t.Error("channel still open after Close")
	}
	if _, err := s.Subscribe(ctx, "t"); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe after Close = %v", err)
	}
	comesBack(t, b, "g", "b")
}

// comesBack checks that a new Watermill subscriber of group gets id on a
// later attempt. (Not exactly the second: broker.Consume, which the
// Subscriber runs, may receive the message once more after its ctx ended
// and give it straight back, which memory counts as an attempt.)
func comesBack(t *testing.T, b *broker.Broker, group, id string) {
	t.Helper()
	s := watermill.NewSubscriber(b, watermill.SubscriberConfig{Subscription: broker.SubscriberOptions{Group: group}})
	defer s.Close()
	ch, err := s.Subscribe(ctxT(t), "t")
	if err != nil {
		t.Fatal(err)
	}
	m := next(t, ch)
	m.Ack()
	if a, _ := strconv.Atoi(m.Metadata.Get(broker.HeaderAttempt)); m.UUID != id || a < 2 {
		t.Errorf("next subscriber got %s %v, want %s on a later attempt", m.UUID, m.Metadata, id)
	}
}

// A message handed out but not settled when Subscribe's context ends is
// nacked once the close timeout passes, and the channel is closed.
func TestSubscriberContextEnds(t *testing.T) {
	b := newMemory(t)
	ctx := ctxT(t)
	s := watermill.NewSubscriber(b, watermill.SubscriberConfig{CloseTimeout: 20 * time.Millisecond})
	defer s.Close()
	sctx, stop := context.WithCancel(ctx)
	ch, err := s.Subscribe(sctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	qp, _ := b.NewPublisher(ctx)
	if err := qp.Publish(ctx, "t", &broker.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	next(t, ch) // never settled
	stop()
	for range ch {
	}
	comesBack(t, b, "", "a")
}

// InFlight > 1 hands out several messages before the first is settled.
func TestSubscriberInFlight(t *testing.T) {
	b := newMemory(t)
	ctx := ctxT(t)
	s := watermill.NewSubscriber(b, watermill.SubscriberConfig{InFlight: 3})
	defer s.Close()
	ch, _ := s.Subscribe(ctx, "t")
	qp, _ := b.NewPublisher(ctx)
	if err := qp.Publish(ctx, "t", &broker.Message{}, &broker.Message{}, &broker.Message{}); err != nil {
		t.Fatal(err)
	}
	ms := []*message.Message{next(t, ch), next(t, ch), next(t, ch)}
	for _, m := range ms {
		m.Ack()
	}
}

// The subscription's guarantee is kept: under AtMostOnce a message is acked
// before it is handed out, so a Nack does not bring it back; under
// EffectivelyOnce a message whose ID was handled already is not handed out
// again; the idempotency store goes with EffectivelyOnce only.
func TestSubscriberGuarantees(t *testing.T) {
	b := newMemory(t)
	ctx := ctxT(t)
	qp, _ := b.NewPublisher(ctx)

	amo := watermill.NewSubscriber(b, watermill.SubscriberConfig{
		Subscription: broker.SubscriberOptions{Group: "amo", Guarantee: semantics.AtMostOnce}})
	defer amo.Close()
	ch, err := amo.Subscribe(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	// One key: memory would hand a redelivery of a out before b.
	if err := qp.Publish(ctx, "t", &broker.Message{ID: "a", Key: "k"}, &broker.Message{ID: "b", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	next(t, ch).Nack()
	m := next(t, ch)
	m.Ack()
	if m.UUID != "b" {
		t.Errorf("after a Nack under at-most-once got %s, want b", m.UUID)
	}

	store := dedupe.NewMemoryStore(dedupe.MemoryOptions{})
	eo := watermill.NewSubscriber(b, watermill.SubscriberConfig{Idempotency: store,
		Subscription: broker.SubscriberOptions{Group: "eo", Guarantee: semantics.EffectivelyOnce}})
	defer eo.Close()
	ch, err = eo.Subscribe(ctx, "e")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"x", "x", "y"} {
		if err := qp.Publish(ctx, "e", &broker.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"x", "y"} {
		m := next(t, ch)
		if m.UUID != want {
			t.Errorf("effectively-once handed out %s, want %s", m.UUID, want)
		}
		m.Ack()
	}

	for name, cfg := range map[string]watermill.SubscriberConfig{
		"effectively-once without a store": {Subscription: broker.SubscriberOptions{Guarantee: semantics.EffectivelyOnce}},
		"a store at-least-once":            {Idempotency: store},
	} {
		s := watermill.NewSubscriber(b, cfg)
		if _, err := s.Subscribe(ctx, "t"); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
		_ = s.Close()
	}
}

// Handler runs a queuekit handler on a Watermill message.
func TestHandler(t *testing.T) {
	var got *broker.Message
	h := watermill.Handler(broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		got = m
		return nil
	}))
	m := message.NewMessage("id", []byte("p"))
	m.Metadata.Set(broker.HeaderAttempt, "3")
	m.Metadata.Set(watermill.MetadataKey, "k")
	if err := h(m); err != nil {
		t.Fatal(err)
	}
	if got.ID != "id" || got.Key != "k" || got.Attempt != 3 || len(got.Headers) != 0 {
		t.Errorf("handler got %+v", got)
	}
}
