package rabbitmq

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// Under AtMostOnce a message is acknowledged, and RabbitMQ has processed the
// acknowledgement, before Receive hands it out: a consumer whose connection
// dies right after never gets it back, nor does anyone else.
func TestAtMostOnceNoRedeliveryAfterACrash(t *testing.T) {
	px, purl := startProxy(t, testenv.RabbitMQ(t))
	crashing := dialVia(t, purl, Options{})
	topic := uniq("amo")
	opts := broker.SubscriberOptions{Topic: topic, Group: "g", Guarantee: semantics.AtMostOnce}
	sub := newSub(t, crashing, opts)
	other := openBroker(t, "", Options{})
	pub := newPub(t, other)
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "first"}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 5*time.Second)
	if d.Message().ID != "first" {
		t.Fatalf("received %q", d.Message().ID)
	}
	px.cut() // the consumer's process dies with the message unsettled
	_ = sub.Close(context.Background())

	// Anything requeued would come before "after" in the queue.
	next := newSub(t, other, opts)
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "after"}); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, next, 10*time.Second).Message(); m.ID != "after" {
		t.Errorf("after the crash the group received %q first, want after (at-most-once: first is never redelivered)", m.ID)
	}
}

// Under AtMostOnce prefetch still bounds what the client holds, and what it
// received but did not hand out goes back to the queue when the subscriber
// closes: only the messages Receive returned are gone.
func TestAtMostOnceKeepsWhatWasNotHandedOut(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("amoclose")
	opts := broker.SubscriberOptions{Topic: topic, Group: "g", Guarantee: semantics.AtMostOnce, Prefetch: 4}
	sub := newSub(t, b, opts)
	const n = 10
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{ID: fmt.Sprint(i)}
	}
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 5*time.Second)
	if err := d.Ack(ctxT(t, time.Second)); err != nil {
		t.Errorf("Ack under AtMostOnce = %v, want nil (acknowledged on receipt)", err)
	}
	d2 := receive(t, sub, 5*time.Second)
	if err := d2.Nack(ctxT(t, time.Second), 0); broker.KindOf(err) != semantics.Unsupported {
		t.Errorf("Nack under AtMostOnce = %v, want Unsupported", err)
	}
	if err := sub.Close(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	next := newSub(t, b, opts)
	got := map[string]bool{}
	for range n - 2 {
		got[receive(t, next, 5*time.Second).Message().ID] = true
	}
	if got[d.Message().ID] || got[d2.Message().ID] || len(got) != n-2 {
		t.Errorf("after Close the group received %v: want the %d messages not handed out, and not %s or %s", got, n-2, d.Message().ID, d2.Message().ID)
	}
}
