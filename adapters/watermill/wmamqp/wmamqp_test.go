package wmamqp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

func open(t *testing.T) (*broker.Broker, string) {
	t.Helper()
	url := testenv.RabbitMQ(t)
	c := &cleanup{}
	t.Cleanup(func() { c.run(t, url) })
	return openWith(t, url, c), randomName()
}

// openWith opens a broker whose queues and exchanges c deletes.
func openWith(t *testing.T, url string, c *cleanup) *broker.Broker {
	t.Helper()
	wb, err := New(url, Options{declared: c.add})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(wb)
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

func randomName() string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return "qk-wmamqp-" + hex.EncodeToString(r[:])
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func publish(t *testing.T, b *broker.Broker, topic string, ids ...string) {
	t.Helper()
	pub, err := b.NewPublisher(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctxT(t))
	for _, id := range ids {
		if err := pub.Publish(ctxT(t), topic, &broker.Message{ID: id, Key: "k"}); err != nil {
			t.Fatal(err)
		}
	}
}

func subscribe(t *testing.T, b *broker.Broker, opts broker.SubscriberOptions) *broker.Subscriber {
	t.Helper()
	sub, err := b.NewSubscriber(ctxT(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close(context.Background()) })
	return sub
}

// nextGets checks that a new subscriber of group "g" on topic receives
// (and acks) every message in ids.
func nextGets(t *testing.T, b *broker.Broker, topic string, ids ...string) {
	t.Helper()
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for len(want) > 0 {
		d, err := sub.Receive(ctxT(t))
		if err != nil {
			t.Fatalf("still waiting for %v: %v", want, err)
		}
		delete(want, d.Message().ID)
		if err := d.Ack(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
}

// Closing a subscriber loses nothing: the delivery it handed out and never
// settled, and the messages its subscriptions had taken from RabbitMQ but
// Receive had not returned yet, all go to the next subscriber of the group.
func TestCloseGivesBackWhatItHolds(t *testing.T) {
	b, topic := open(t)
	ctx := ctxT(t)
	first := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 4})
	publish(t, b, topic, "a", "b", "c", "d")
	if _, err := first.Receive(ctx); err != nil { // held, never settled
		t.Fatal(err)
	}
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	nextGets(t, b, topic, "a", "b", "c", "d")
}

// A delayed nack still waiting when its subscriber closes is released at
// once rather than holding Close (or the message) for the whole delay.
func TestDelayedNackReleasedAtClose(t *testing.T) {
	b, topic := open(t)
	ctx := ctxT(t)
	first := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 1})
	publish(t, b, topic, "late")
	d, err := first.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Nack(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	nextGets(t, b, topic, "late")
}

// With Ordering PerKey the group's queue is single-active-consumer: of two
// subscribers, one gets everything, in publish order.
func TestPerKeySingleActiveConsumer(t *testing.T) {
	b, topic := open(t)
	ctx := ctxT(t)
	opts := broker.SubscriberOptions{Topic: topic, Group: "g", Ordering: semantics.PerKey}
	s1 := subscribe(t, b, opts)
	subscribe(t, b, opts)
	ids := []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}
	publish(t, b, topic, ids...)
	var got []string
	for i := range ids {
		d, err := s1.Receive(ctx) // the first consumer is the active one
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		got = append(got, d.Message().ID)
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(got, "") != strings.Join(ids, "") {
		t.Errorf("order %v", got)
	}
}

// Declare makes a group's queue, which keeps what is published before its
// first subscriber. Another broker (another process) does not see the group
// and refuses to publish to the topic until it declares the group too,
// which is idempotent.
func TestDeclareAndHasGroup(t *testing.T) {
	url := testenv.RabbitMQ(t)
	c := &cleanup{}
	t.Cleanup(func() { c.run(t, url) })
	b, other, topic := openWith(t, url, c), openWith(t, url, c), randomName()
	ctx := ctxT(t)
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	publish(t, b, topic, "early")
	pub, err := other.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	if err := pub.Publish(ctx, topic, &broker.Message{ID: "refused"}); !errors.Is(err, broker.ErrNoGroup) {
		t.Fatalf("Publish from a broker that declared no group = %v, want ErrNoGroup", err)
	}
	if err := other.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, topic, &broker.Message{ID: "late"}); err != nil {
		t.Fatal(err)
	}
	nextGets(t, b, topic, "early", "late")
}

// At-most-once is refused, naming why; names too long for AMQP are refused
// before any I/O; As reaches the AMQP connection.
func TestRefusals(t *testing.T) {
	b, topic := open(t)
	ctx := ctxT(t)
	_, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Guarantee: semantics.AtMostOnce})
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "at-most-once") {
		t.Errorf("AtMostOnce: %v, want unsupported", err)
	}
	long := strings.Repeat("x", 250)
	if err := b.Declare(ctx, long, "group"); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("Declare with a queue name over 255 bytes: %v", err)
	}
	var conn *amqp091.Connection
	var wrapper *wamqp.ConnectionWrapper
	if !b.As(&conn) || conn == nil || !b.As(&wrapper) {
		t.Errorf("As: connection %v, wrapper %v", conn, wrapper)
	}
}

// An unreachable server is a prompt error that does not show the password.
func TestUnreachable(t *testing.T) {
	start := time.Now()
	_, err := New("amqp://guest:s3cret@127.0.0.1:1/", Options{})
	if err == nil {
		t.Fatal("New succeeded against a closed port")
	}
	if strings.Contains(err.Error(), "s3cret") || broker.KindOf(err) != semantics.Transient {
		t.Errorf("err = %v (kind %v)", err, broker.KindOf(err))
	}
	if d := time.Since(start); d > 12*time.Second {
		t.Errorf("took %v", d)
	}
}
