package rabbitmq

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/testenv"
)

// held are Options whose subscribers hold acks until a run is complete,
// Receive waits or the channel closes: no timer sends them meanwhile.
var held = Options{ackDelay: time.Hour}

// publishIDs publishes one message per ID to topic.
func publishIDs(t *testing.T, pub *broker.Publisher, topic string, ids ...string) {
	t.Helper()
	msgs := make([]*broker.Message, len(ids))
	for i, id := range ids {
		msgs[i] = &broker.Message{ID: id}
	}
	if err := pub.Publish(ctxT(t, 10*time.Second), topic, msgs...); err != nil {
		t.Fatal(err)
	}
}

// receiveUntil receives from sub until the message with ID last and
// returns the IDs received before it.
func receiveUntil(t *testing.T, sub *broker.Subscriber, last string) []string {
	t.Helper()
	var ids []string
	for {
		m := receive(t, sub, 10*time.Second).Message()
		if m.ID == last {
			return ids
		}
		ids = append(ids, m.ID)
	}
}

// Acks held for a multiple ack are sent when the subscriber closes, after
// the nack or reject of a delivery among them, which they must not cover:
// after Close, the group gets back the nacked message (or the dead-letter
// topic the rejected one) and none of the acked ones.
func TestCoalescedAcksOnCloseSkipTheNacked(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxAttempts int // 1: the nack is a reject, to the dead-letter queue
	}{{"requeue", 0}, {"reject", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			b := openBroker(t, "", held)
			topic := uniq("coalesce")
			opts := broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: tc.maxAttempts}
			sub := newSub(t, b, opts)
			pub := newPub(t, b)
			const n, nacked = 10, 4
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprint("m", i)
			}
			publishIDs(t, pub, topic, ids...)
			ds := make([]*broker.Delivery, n)
			for i := range ds {
				ds[i] = receive(t, sub, 10*time.Second)
				if got := ds[i].Message().ID; got != ids[i] {
					t.Fatalf("delivery %d is %s, want %s", i, got, ids[i])
				}
			}
			// Acks of m0..m3 make a run; m5..m9 wait behind m4, which is
			// then nacked: the run m0..m9 is complete, less m4.
			for i, d := range ds {
				if i != nacked {
					if err := d.Ack(ctxT(t, time.Second)); err != nil {
						t.Fatalf("Ack %s: %v", d.Message().ID, err)
					}
				}
			}
			if err := ds[nacked].Nack(ctxT(t, time.Second), 0); err != nil {
				t.Fatalf("Nack: %v", err)
			}
			if err := sub.Close(ctxT(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}

			// Anything requeued comes before "after" in the queue.
			publishIDs(t, pub, topic, "after")
			got := receiveUntil(t, newSub(t, b, opts), "after")
			want := []string{ids[nacked]}
			if tc.maxAttempts > 0 {
				want = nil
				dlq := newSub(t, b, broker.SubscriberOptions{Topic: broker.DeadLetterTopic(topic), Group: "g"})
				if m := receive(t, dlq, 10*time.Second).Message(); m.ID != ids[nacked] {
					t.Errorf("dead letter %s, want %s (rejected)", m.ID, ids[nacked])
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("after Close the group received %v before the next message, want %v: acked messages came back or the nacked one was acked", got, want)
			}
		})
	}
}

// A run of acks is sent as soon as it is complete (a quarter of the
// prefetch), with no Close nor timer: a crash right after does not bring
// those messages back.
func TestCoalescedAcksSentWhenTheRunIsComplete(t *testing.T) {
	px, purl := startProxy(t, testenv.RabbitMQ(t))
	crashing := dialVia(t, purl, held)
	other := openBroker(t, "", Options{})
	topic := uniq("coalrun")
	opts := broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 8} // runs of 2
	sub := newSub(t, crashing, opts)
	pub := newPub(t, other)
	publishIDs(t, pub, topic, "a", "b", "c")
	var ds []*broker.Delivery
	for range 3 {
		ds = append(ds, receive(t, sub, 10*time.Second))
	}
	for _, d := range ds {
		if err := d.Ack(ctxT(t, time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	// a and b were a complete run, sent; c is held. A synchronous call on
	// the channel makes sure RabbitMQ processed what was sent before it.
	var ch *amqp.Channel
	if !sub.As(&ch) {
		t.Fatal("subscriber.As(*amqp.Channel) = false")
	}
	if err := ch.Qos(8, 0, false); err != nil {
		t.Fatal(err)
	}
	px.cut()
	_ = sub.Close(context.Background())
	publishIDs(t, pub, topic, "after")
	got := receiveUntil(t, newSub(t, other, opts), "after")
	if !slices.Equal(got, []string{"c"}) {
		t.Errorf("after the crash the group received %v before the next message, want [c] (a and b acked as a run, c's ack held when the connection died)", got)
	}
}

// Delivery tags are a channel's own: acks held for a channel whose
// connection died are dropped, never sent on the channel that replaces it
// (where the same tags are other deliveries), and an Ack of a delivery of
// the dead channel fails.
func TestCoalescedAcksOfALostChannelAreDropped(t *testing.T) {
	px, purl := startProxy(t, testenv.RabbitMQ(t))
	b := dialVia(t, purl, held)
	other := openBroker(t, "", Options{})
	topic := uniq("coallost")
	opts := broker.SubscriberOptions{Topic: topic, Group: "g"}
	sub := newSub(t, b, opts)
	pub := newPub(t, other)
	publishIDs(t, pub, topic, "a", "b", "c")
	var ds []*broker.Delivery
	for range 3 {
		ds = append(ds, receive(t, sub, 10*time.Second))
	}
	for _, d := range ds[:2] {
		if err := d.Ack(ctxT(t, time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	px.cut() // a's and b's acks are held: lost with the connection
	// The subscriber resubscribes on a new connection; RabbitMQ redelivers
	// all three there, with tags 1..3 again.
	var again []*broker.Delivery
	for range 3 {
		again = append(again, receive(t, sub, 20*time.Second))
	}
	if err := ds[2].Ack(ctxT(t, time.Second)); err == nil {
		t.Errorf("Ack of a delivery of the dead channel = nil, want an error")
	}
	var ids []string
	for _, d := range again {
		ids = append(ids, d.Message().ID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("after the cut the subscriber received %v, want a, b and c again", ids)
	}
	// None of these is acked: all three must come back after Close.
	if err := sub.Close(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	publishIDs(t, pub, topic, "after")
	got := receiveUntil(t, newSub(t, other, opts), "after")
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("after Close the group received %v before the next message, want a, b and c (nothing was acked on the new channel)", got)
	}
}

// Acks held behind a delivery left unsettled go out one by one within
// ackDelay: otherwise the prefetch would fill with acked deliveries and the
// subscriber stall. What the channel tracks stays bounded meanwhile, and
// nothing acked comes back after Close.
func TestCoalescedAcksBehindAnUnsettledDelivery(t *testing.T) {
	b := openBroker(t, "", Options{})
	rb := rabbit(t, b)
	topic := uniq("coalslow")
	const prefetch, n = 50, 400
	ds, err := rb.NewSubscriber(ctxT(t, 10*time.Second), driver.SubscriberOptions{
		Topic: topic, Group: "g", DeadLetterTopic: broker.DeadLetterTopic(topic), Prefetch: prefetch})
	if err != nil {
		t.Fatal(err)
	}
	s := ds.(*subscriber)
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprint("m", i)
	}
	pub := newPub(t, b)
	publishIDs(t, pub, topic, ids...)
	first, err := s.Receive(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	most := 0
	for i := 1; i < n; i++ {
		d, err := s.Receive(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatalf("Receive %d of %d with the first unsettled: %v (acks behind it not sent?)", i, n, err)
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
		sc := d.(*delivery).sc
		sc.mu.Lock()
		most = max(most, len(sc.tags))
		sc.mu.Unlock()
	}
	if most > 4*prefetch {
		t.Errorf("the channel tracked up to %d tags with %d unsettled at most: want it bounded", most, prefetch)
	}
	if err := first.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	publishIDs(t, pub, topic, "after")
	if got := receiveUntil(t, newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"}), "after"); len(got) > 0 {
		t.Errorf("after Close the group received %v before the next message, want nothing (all acked)", got)
	}
}
