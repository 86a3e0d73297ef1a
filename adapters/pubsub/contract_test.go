package pubsub_test

import (
	"context"
	"strings"
	"testing"
	"time"

	ps "cloud.google.com/go/pubsub/v2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	qpubsub "github.com/queuekit/queuekit/adapters/pubsub"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Declare creates the topic and one subscription per group, with the
// settings a subscriber with default options would give it; each group
// then receives every message published, though its subscriber comes
// later. Declaring again changes nothing.
func TestDeclare(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "ack_deadline=20s")
	topic := name("declare")
	for range 2 {
		if err := b.Declare(ctx, topic, "a", "b"); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []string{"a", "b"} {
		sp := subscriptionOf(t, ctx, b, topic, g)
		if sp.AckDeadlineSeconds != 20 || !sp.EnableMessageOrdering || sp.EnableExactlyOnceDelivery || sp.DeadLetterPolicy != nil {
			t.Errorf("group %s: subscription %v, want ack deadline 20s, ordering, no exactly-once, no dead-letter policy", g, sp)
		}
	}
	m := &broker.Message{Key: "k", Payload: []byte("declared")}
	if err := newPublisher(t, b).Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"a", "b"} {
		d := receive(t, ctx, newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: g}))
		if d.Message().ID != m.ID {
			t.Errorf("group %s got %s, want %s", g, d.Message().ID, m.ID)
		}
		_ = d.Ack(ctx)
	}

	// create=false declares nothing: what is missing is NotFound.
	noCreate := openBroker(t, "create=false")
	if err := noCreate.Declare(ctx, name("declare-missing"), "a"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Declare of a missing topic with create=false = %v, want not found", err)
	}
	if err := noCreate.Declare(ctx, topic, "c"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Declare of a missing group with create=false = %v, want not found", err)
	}
	if err := noCreate.Declare(ctx, topic, "a", "b"); err != nil {
		t.Errorf("Declare of what exists with create=false = %v", err)
	}
}

// Under AtMostOnce, Ack must be recorded by Pub/Sub before it returns,
// which only exactly-once delivery gives: the adapter turns it on, on a
// new subscription and on an existing one. Where it may not (create=false)
// it refuses with an Unsupported error naming what would work.
func TestAtMostOnceTurnsOnExactlyOnce(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("amo")
	if err := b.Declare(ctx, topic, "declared"); err != nil {
		t.Fatal(err)
	}
	if subscriptionOf(t, ctx, b, topic, "declared").EnableExactlyOnceDelivery {
		t.Fatal("Declare turned on exactly-once delivery")
	}

	noCreate := openBroker(t, "create=false")
	_, err := noCreate.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "declared", Guarantee: semantics.AtMostOnce})
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "--enable-exactly-once-delivery") || !strings.Contains(err.Error(), "create=true") {
		t.Errorf("AtMostOnce with create=false on a subscription without exactly-once = %v, want an Unsupported error naming the setting", err)
	}

	for _, g := range []string{"declared", "new"} {
		sub := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: g, Guarantee: semantics.AtMostOnce})
		if !subscriptionOf(t, ctx, b, topic, g).EnableExactlyOnceDelivery {
			t.Errorf("group %s: AtMostOnce subscriber on a subscription without exactly-once delivery", g)
		}
		_ = sub
	}
	// Now it has it, create=false is fine.
	s, err := noCreate.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "declared", Guarantee: semantics.AtMostOnce})
	if err != nil {
		t.Fatalf("AtMostOnce with create=false on an exactly-once subscription: %v", err)
	}
	_ = s.Close(ctx)

	m := &broker.Message{Payload: []byte("once")}
	if err := newPublisher(t, b).Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	sub := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "new", Guarantee: semantics.AtMostOnce})
	d := receive(t, ctx, sub)
	if err := d.Ack(ctx); err != nil {
		t.Fatalf("confirmed Ack: %v", err)
	}
}

// PerKey needs ordering keys on the messages (ordering=true) and message
// ordering on the subscription, which Pub/Sub cannot turn on later: where
// either is missing NewSubscriber refuses (Unsupported), and never
// consumes unordered.
func TestPerKeyOrderingConfigured(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("perkey")
	newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "ordered", Ordering: semantics.PerKey})
	if !subscriptionOf(t, ctx, b, topic, "ordered").EnableMessageOrdering {
		t.Error("PerKey subscriber on a subscription without message ordering")
	}

	if _, err := driverOf(t, b).EnsureSubscription(ctx, qpubsub.SubscriptionConfig{
		Name: qpubsub.DefaultSubscriptionName(topic, "unordered"), Topic: topic}); err != nil {
		t.Fatal(err)
	}
	_, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "unordered", Ordering: semantics.PerKey})
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "another group") {
		t.Errorf("PerKey on a subscription without ordering = %v, want an Unsupported error", err)
	}
	s, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "unordered"})
	if err != nil {
		t.Errorf("Unordered subscriber on a subscription without ordering: %v", err)
	} else {
		_ = s.Close(ctx)
	}

	off := openBroker(t, "ordering=false")
	_, err = off.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "ordered", Ordering: semantics.PerKey})
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "ordering=true") {
		t.Errorf("PerKey with ordering=false = %v, want an Unsupported error naming ordering=true", err)
	}
}

// Topic, group and subscription names that break Pub/Sub's rules are refused as
// InvalidArgument before any request: the client here points at a port
// where nothing listens, so a request would fail otherwise.
func TestNamesCheckedBeforeAnyRequest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := ps.NewClient(ctx, "p", option.WithEndpoint("127.0.0.1:1"), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := qpubsub.New(c, qpubsub.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(d)
	p := newPublisher(t, b)
	long := strings.Repeat("t", 256)
	for _, topic := range []string{"ab", "1topic", "goog-topic", "a topic", "tópico", "topic/x", long, "projects/p/subscriptions/abc"} {
		if _, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic}); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("NewSubscriber(topic %q) = %v, want invalid argument", topic, err)
		}
		if err := b.Declare(ctx, topic, "g"); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Declare(%q) = %v, want invalid argument", topic, err)
		}
		if err := p.Publish(ctx, topic, &broker.Message{}); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Publish(%q) = %v, want invalid argument", topic, err)
		}
		if err := d.EnsureTopic(ctx, topic); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("EnsureTopic(%q) = %v, want invalid argument", topic, err)
		}
		if _, err := d.EnsureSubscription(ctx, qpubsub.SubscriptionConfig{Name: "sub", Topic: topic}); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("EnsureSubscription(topic %q) = %v, want invalid argument", topic, err)
		}
	}
	for _, group := range []string{"a group", "g/h", "grüppe", "g:h"} {
		if _, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "topic", Group: group}); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("NewSubscriber(group %q) = %v, want invalid argument", group, err)
		}
		if err := b.Declare(ctx, "topic", group); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Declare(group %q) = %v, want invalid argument", group, err)
		}
	}
	// A topic whose dead-letter topic would be too long.
	_, err = b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: strings.Repeat("t", 253), MaxAttempts: 5})
	if broker.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), "dead-letter topic") {
		t.Errorf("NewSubscriber with a 257-character dead-letter topic = %v, want invalid argument", err)
	}
}

// As reaches the SDK client through the broker, and the SDK subscriber
// through a subscriber.
func TestAs(t *testing.T) {
	b := openBroker(t)
	var c *ps.Client
	if !b.As(&c) || c == nil || c.Project() != clientOf(t, b).Project() {
		t.Errorf("As(*pubsub.Client) = %v, %v", c != nil, c)
	}
	var s *ps.Subscriber
	sub := newSubscriber(t, b, broker.SubscriberOptions{Topic: name("as")})
	if !sub.As(&s) || s == nil {
		t.Error("Subscriber.As(*pubsub.Subscriber) = false")
	}
	var wrong *ps.Publisher
	if b.As(&wrong) {
		t.Error("As(*pubsub.Publisher) = true on a broker")
	}
}

// A message published by another client with attributes named like
// queuekit's reserved headers: the ID travels as queuekit-id by design (so
// other producers can set it), but Attempt is always counted, never read
// from an attribute, and a queuekit-attempt attribute is dropped.
func TestAttemptNotFromAttribute(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("reserved")
	sub := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic})
	pub := clientOf(t, b).Publisher(topic)
	defer pub.Stop()
	if _, err := pub.Publish(ctx, &ps.Message{Data: []byte("x"), Attributes: map[string]string{
		broker.HeaderAttempt: "7", broker.HeaderID: "their-id", "h": "v"}}).Get(ctx); err != nil {
		t.Fatal(err)
	}
	d := receive(t, ctx, sub)
	m := d.Message()
	if m.Attempt != 1 || m.Header(broker.HeaderAttempt) != "" || m.ID != "their-id" || m.Header("h") != "v" {
		t.Errorf("got Attempt %d, ID %q, headers %v; want attempt 1, ID their-id, only h", m.Attempt, m.ID, m.Headers)
	}
	if err := d.Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if d := receive(t, ctx, sub); d.Message().Attempt != 2 {
		t.Errorf("redelivery Attempt = %d, want 2", d.Message().Attempt)
	} else {
		_ = d.Ack(ctx)
	}
}
