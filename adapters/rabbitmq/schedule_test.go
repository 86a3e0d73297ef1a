package rabbitmq

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// A scheduled message arrives in every group, not before DeliverAt, as an
// ordinary first delivery: key, headers and PublishedAt kept, the
// adapter's routing header and DeliverAt gone, Attempt 1.
func TestScheduledDeliveryReachesEveryGroup(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("sched")
	subs := []*broker.Subscriber{
		newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "a"}),
		newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "b"}),
	}
	at := time.Now().Add(300 * time.Millisecond)
	m := &broker.Message{ID: "m", Key: "k", Payload: []byte("later"), Headers: map[string]string{"h": "v"}, DeliverAt: at}
	if err := newPub(t, b).Publish(ctxT(t, 10*time.Second), topic, m); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	for _, sub := range subs {
		d := receive(t, sub, 10*time.Second)
		if early := time.Until(at); early > 0 {
			t.Errorf("delivered %v before DeliverAt", early)
		}
		got := d.Message()
		if got.ID != "m" || got.Key != "k" || string(got.Payload) != "later" || got.Header("h") != "v" {
			t.Errorf("delivered %+v; want the message as published", got)
		}
		if _, ok := got.Headers[headerSchedule]; ok || len(got.Headers) != 1 {
			t.Errorf("delivered headers %v; want only the user's", got.Headers)
		}
		if !got.DeliverAt.IsZero() || got.Attempt != 1 || !got.PublishedAt.Equal(m.PublishedAt) {
			t.Errorf("DeliverAt %v, Attempt %d, PublishedAt %v; want zero, 1, %v", got.DeliverAt, got.Attempt, got.PublishedAt, m.PublishedAt)
		}
		if err := d.Ack(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
}

// The no-group rule holds for scheduled messages too: RabbitMQ returns one
// whose topic has no group (the schedule exchange routes only topics a
// group was declared on), though the topic's schedule queue exists.
func TestScheduledPublishWithoutGroupIsErrNoGroup(t *testing.T) {
	b := openBroker(t, "", Options{})
	pub := newPub(t, b)
	topic := uniq("sched-nobody")
	later := func() *broker.Message { return &broker.Message{DeliverAt: time.Now().Add(time.Minute)} }
	err := pub.Publish(ctxT(t, 10*time.Second), topic, later(), &broker.Message{})
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 2 || !errors.Is(err, broker.ErrNoGroup) || broker.KindOf(err) != semantics.NotFound {
		t.Fatalf("scheduled and immediate Publish to a topic without group = %v; want 2 failures matching ErrNoGroup", err)
	}
	if !strings.Contains(pe.Failed[0].Err.Error(), "scheduled") {
		t.Errorf("failure of the scheduled message = %v; want it to say so", pe.Failed[0].Err)
	}
	rb := rabbit(t, b)
	if left := existing(t, rb, []string{registryName(topic)}); len(left) > 0 {
		t.Errorf("a refused scheduled Publish made the topic's registry %v", left)
	}
	// Declaring a group makes the topic schedulable; deleting the last
	// group makes it unschedulable again.
	if err := b.Declare(ctxT(t, 10*time.Second), topic, "g"); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctxT(t, 10*time.Second), topic, later()); err != nil {
		t.Fatalf("scheduled Publish after Declare: %v", err)
	}
	if err := rb.DeleteSubscription(ctxT(t, 10*time.Second), topic, "g"); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctxT(t, 10*time.Second), topic, later()); !errors.Is(err, broker.ErrNoGroup) {
		t.Errorf("scheduled Publish after the last group was deleted = %v; want ErrNoGroup", err)
	}
	t.Cleanup(func() { deleteTopics(t, topic) })
}

// Messages of one key scheduled for the same time share a schedule queue
// and arrive in publish order, behind none of the key's unscheduled
// messages.
func TestScheduledMessagesKeepPublishOrderAmongThemselves(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("sched-order")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Ordering: semantics.PerKey})
	at := time.Now().Add(500 * time.Millisecond)
	var msgs []*broker.Message
	var want []string
	for i := range 10 {
		id := fmt.Sprintf("s%02d", i)
		msgs = append(msgs, &broker.Message{ID: id, Key: "k", DeliverAt: at})
		want = append(want, id)
	}
	msgs = append(msgs, &broker.Message{ID: "now", Key: "k"})
	want = append([]string{"now"}, want...)
	if err := newPub(t, b).Publish(ctxT(t, 10*time.Second), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	var got []string
	for range want {
		d := receive(t, sub, 10*time.Second)
		got = append(got, d.Message().ID)
		if err := d.Ack(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("delivered %v; want %v", got, want)
	}
	if early := time.Until(at); early > 0 {
		t.Errorf("the scheduled messages were delivered %v before DeliverAt", early)
	}
}

// DeleteTopic deletes the topic's schedule queues, with the messages not
// yet due, and Queues lists them before.
func TestDeleteTopicDeletesScheduleQueues(t *testing.T) {
	b := openBroker(t, "", Options{})
	rb := rabbit(t, b)
	topic := uniq("sched-delete")
	ctx := ctxT(t, 30*time.Second)
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	if err := newPub(t, b).Publish(ctx, topic, &broker.Message{ID: "held", DeliverAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	qs, err := rb.Queues(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var sched []string
	for _, q := range qs {
		if q.Role == RoleSchedule {
			sched = append(sched, q.Queue)
			if q.Messages != 1 || !strings.HasPrefix(q.Queue, topic+schedMarker) {
				t.Errorf("schedule queue %+v; want %s... holding the message", q, topic+schedMarker)
			}
		}
	}
	if len(sched) != 1 {
		t.Fatalf("Queues = %+v; want one schedule queue", qs)
	}
	if err := rb.DeleteTopic(ctx, topic); err != nil {
		t.Fatal(err)
	}
	if left := existing(t, rb, sched); len(left) > 0 {
		t.Errorf("left after DeleteTopic: %v", left)
	}
	// The topic is unscheduled with its groups gone; declaring a group
	// again declares the schedule queue again.
	pub := newPub(t, b)
	if err := pub.Publish(ctx, topic, &broker.Message{DeliverAt: time.Now().Add(time.Hour)}); !errors.Is(err, broker.ErrNoGroup) {
		t.Errorf("scheduled Publish after DeleteTopic = %v; want ErrNoGroup", err)
	}
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, topic, &broker.Message{DeliverAt: time.Now().Add(time.Hour)}); err != nil {
		t.Errorf("scheduled Publish after declaring again: %v", err)
	}
	if err := rb.DeleteTopic(ctx, topic); err != nil {
		t.Fatal(err)
	}
}

// Passive brokers declare nothing, so they do not claim scheduled delivery:
// package broker refuses a scheduled message, naming the outbox.
func TestPassiveClaimsNoScheduledDelivery(t *testing.T) {
	b := openBroker(t, "passive=true", Options{})
	if c := b.Capabilities(); c.ScheduledDelivery {
		t.Errorf("passive capabilities claim ScheduledDelivery")
	}
	if c := openBroker(t, "", Options{}).Capabilities(); !c.ScheduledDelivery || c.MaxDelay != maxDelay {
		t.Errorf("ScheduledDelivery %v, MaxDelay %v; want true, %v", c.ScheduledDelivery, c.MaxDelay, maxDelay)
	}
	pub := newPub(t, b)
	err := pub.Publish(ctxT(t, 5*time.Second), uniq("t"), &broker.Message{DeliverAt: time.Now().Add(time.Minute)})
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "outbox") {
		t.Errorf("scheduled Publish on a passive broker = %v; want Unsupported naming the outbox", err)
	}
}

// A user header with the adapter's routing header's name is refused.
func TestScheduleHeaderIsReserved(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("sched-header")
	newSub(t, b, broker.SubscriberOptions{Topic: topic})
	err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, &broker.Message{Headers: map[string]string{headerSchedule: "x"}})
	if broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("Publish with header %s = %v; want InvalidArgument", headerSchedule, err)
	}
}

func TestScheduleNamesFit(t *testing.T) {
	long := strings.Repeat("t", maxNameLen)
	for _, topic := range []string{"orders", long, strings.Repeat("é", 127) + "x"} {
		q := scheduleQueue(topic, 4_000_000_000)
		if len(q) > maxNameLen || !isDelayQueue(q) || checkName("test", "queue", q, maxNameLen) != nil {
			t.Errorf("scheduleQueue(%.20s..., max) = %q (%d bytes)", topic, q, len(q))
		}
		if scheduleQueue(topic, 10) == scheduleQueue(topic+"x", 10) {
			t.Errorf("schedule queues of %.20s... and its extension collide", topic)
		}
	}
	if got := scheduleQueue("orders", 1500); got != "orders.qk-delay-s1500ms" {
		t.Errorf("scheduleQueue(orders, 1500) = %q", got)
	}
	for _, x := range []string{"queuekit", strings.Repeat("x", maxNameLen)} {
		for _, suffix := range []string{schedExchangeSuffix, schedRouterSuffix} {
			if n := fitName(x, suffix); len(n) > maxNameLen || !strings.HasSuffix(n, suffix) {
				t.Errorf("fitName(%.20s..., %s) = %q", x, suffix, n)
			}
		}
	}
}
