package memory_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func TestScheduledDeliveryClaimed(t *testing.T) {
	caps := newBroker(t, memory.Options{}).Capabilities()
	if !caps.ScheduledDelivery || caps.MaxDelay != 0 {
		t.Errorf("ScheduledDelivery %v, MaxDelay %v; want true and no cap", caps.ScheduledDelivery, caps.MaxDelay)
	}
}

// A scheduled message is held in every group, counted as delayed, and
// holds back neither its key's later messages nor unkeyed ones.
func TestScheduledMessageIsHeld(t *testing.T) {
	b := newBroker(t, memory.Options{})
	s1 := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "g1"})
	s2 := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "g2"})
	pub := newPub(t, b)
	held := &broker.Message{ID: "held", Key: "k", DeliverAt: time.Now().Add(time.Hour)}
	publish(t, pub, "t", held, &broker.Message{ID: "now", Key: "k"})
	for _, g := range []string{"g1", "g2"} {
		st, ok := mem(t, b).Depth("t", g)
		if !ok || st.Delayed != 1 || st.Ready != 1 {
			t.Errorf("group %s: %+v; want 1 delayed and 1 ready", g, st)
		}
	}
	for _, s := range []*broker.Subscriber{s1, s2} {
		d := receive(t, s)
		if d.Message().ID != "now" {
			t.Fatalf("first delivery is %s; want the unscheduled message of the same key", d.Message().ID)
		}
		if err := d.Ack(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if held.DeliverAt.IsZero() {
		t.Error("Publish cleared the caller's DeliverAt")
	}
}

// Scheduled messages are delivered in due order, never before DeliverAt,
// with DeliverAt zero on the delivered message; those of one key due at the
// same time come in publish order, across batches.
func TestScheduledMessagesDueInOrder(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "g"})
	pub := newPub(t, b)
	base := time.Now()
	at := map[string]time.Time{}
	msg := func(id string, after time.Duration) *broker.Message {
		at[id] = base.Add(after)
		return &broker.Message{ID: id, Key: "k", DeliverAt: base.Add(after)}
	}
	var want []string
	var batch1, batch2 []*broker.Message
	batch1 = append(batch1, msg("late", 400*time.Millisecond))
	for i := range 10 {
		id := fmt.Sprintf("same-%02d", i)
		want = append(want, id)
		if i < 5 {
			batch1 = append(batch1, msg(id, 200*time.Millisecond))
		} else {
			batch2 = append(batch2, msg(id, 200*time.Millisecond))
		}
	}
	batch2 = append(batch2, msg("early", 100*time.Millisecond))
	want = append([]string{"early"}, append(want, "late")...)
	publish(t, pub, "t", batch1...)
	publish(t, pub, "t", batch2...)
	for _, id := range want {
		d := receive(t, sub)
		got := time.Now()
		m := d.Message()
		if m.ID != id {
			t.Fatalf("delivered %s; want %s (order %v)", m.ID, id, want)
		}
		if got.Before(at[id]) {
			t.Errorf("%s delivered %v before its DeliverAt", id, at[id].Sub(got))
		}
		if !m.DeliverAt.IsZero() {
			t.Errorf("%s delivered with DeliverAt %v; want zero", id, m.DeliverAt)
		}
		if m.Attempt != 1 {
			t.Errorf("%s delivered with Attempt %d; want 1", id, m.Attempt)
		}
		if err := d.Ack(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}

// A scheduled message that is nacked comes back like any other: the
// schedule applies to its first delivery only.
func TestScheduledMessageNackedComesBack(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "g"})
	pub := newPub(t, b)
	publish(t, pub, "t", &broker.Message{ID: "m", DeliverAt: time.Now().Add(50 * time.Millisecond)})
	d := receive(t, sub)
	if err := d.Nack(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	d = receive(t, sub)
	if d.Message().ID != "m" || d.Message().Attempt != 2 {
		t.Fatalf("redelivery: %s attempt %d; want m attempt 2", d.Message().ID, d.Message().Attempt)
	}
	_ = d.Ack(t.Context())
}

// Closing the broker with scheduled messages held does not block or leak a
// timer that fires into a closed group.
func TestScheduledMessagesGoWithClose(t *testing.T) {
	b := newBroker(t, memory.Options{})
	_ = newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "g"})
	pub := newPub(t, b)
	publish(t, pub, "t", &broker.Message{DeliverAt: time.Now().Add(time.Millisecond)}, &broker.Message{DeliverAt: time.Now().Add(time.Hour)})
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(context.Background(), "t", &broker.Message{}); broker.KindOf(err) != semantics.Closed {
		t.Errorf("Publish after Close: %v", err)
	}
}

func receive(t *testing.T, s *broker.Subscriber) *broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}
