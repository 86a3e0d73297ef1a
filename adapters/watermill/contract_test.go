package watermill_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Publishing to a topic without a group is refused; groups declared first
// each get what is published afterwards, though their subscribers come
// later.
func TestDeclareThenPublish(t *testing.T) {
	b, _ := newGoChannel(t)
	ctx := ctxT(t)
	pub, _ := b.NewPublisher(ctx)
	if err := pub.Publish(ctx, "t", &broker.Message{ID: "lost"}); !errors.Is(err, broker.ErrNoGroup) {
		t.Fatalf("Publish without a group = %v, want ErrNoGroup", err)
	}
	if err := b.Declare(ctx, "t", "a", "b"); err != nil {
		t.Fatal(err)
	}
	if err := b.Declare(ctx, "t", "a"); err != nil {
		t.Fatalf("second Declare: %v", err)
	}
	if err := pub.Publish(ctx, "t", &broker.Message{ID: "m"}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"a", "b"} {
		d := receive(t, subscribe(t, b, broker.SubscriberOptions{Topic: "t", Group: g}))
		if d.Message().ID != "m" {
			t.Errorf("group %s got %s", g, d.Message().ID)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// The subscribers of a group share the group's one GoChannel subscription:
// what a closed subscriber held unsettled goes to the next one, and what it
// acked under AtMostOnce does not.
func TestGroupOutlivesItsSubscribers(t *testing.T) {
	b, _ := newGoChannel(t)
	ctx := ctxT(t)
	opts := broker.SubscriberOptions{Topic: "t", Group: "g", Guarantee: semantics.AtMostOnce}
	first, err := b.NewSubscriber(ctx, opts)
	if err != nil {
		t.Fatalf("GoChannel refused at-most-once: %v", err)
	}
	pub, _ := b.NewPublisher(ctx)
	if err := pub.Publish(ctx, "t", &broker.Message{ID: "acked"}, &broker.Message{ID: "held"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		d := receive(t, first)
		if d.Message().ID == "acked" {
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	next := subscribe(t, b, opts)
	if err := pub.Publish(ctx, "t", &broker.Message{ID: "marker"}); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for !got["held"] || !got["marker"] {
		d := receive(t, next)
		if got[d.Message().ID] || d.Message().ID == "acked" {
			t.Fatalf("%s delivered again", d.Message().ID)
		}
		got[d.Message().ID] = true
		_ = d.Ack(ctx)
	}
}

// What a backend cannot honour is refused, never run weaker: per-key order
// on GoChannel, at-most-once where Watermill's ack is not recorded when it
// returns.
func TestRefusesWhatItCannotHonour(t *testing.T) {
	b, _ := newGoChannel(t)
	ctx := ctxT(t)
	_, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "t", Ordering: semantics.PerKey})
	if broker.KindOf(err) != semantics.Unsupported {
		t.Errorf("PerKey on GoChannel: %v, want unsupported", err)
	}

	gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
	wb, err := watermill.New(watermill.Options{Publisher: gc, Subscriber: gc})
	if err != nil {
		t.Fatal(err)
	}
	async := broker.New(wb)
	defer async.Close(context.Background())
	_, err = async.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "t", Guarantee: semantics.AtMostOnce})
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "SyncAck") {
		t.Errorf("AtMostOnce without SyncAck: %v, want unsupported naming Options.SyncAck", err)
	}
	if ok, _ := wb.HasGroup(ctx, "t"); ok {
		t.Error("a refused subscription declared a group")
	}
}

// With per-subscription Watermill subscribers, Declare needs
// SubscribeInitialize (GoChannel has none: unsupported); a subscriber makes
// the group known to HasGroup.
func TestDeclareNeedsSubscribeInitialize(t *testing.T) {
	gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
	wb, err := watermill.New(watermill.Options{Publisher: gc,
		NewSubscriber: func(context.Context, driver.SubscriberOptions) (message.Subscriber, error) {
			return unclosable{gc}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(wb)
	defer b.Close(context.Background())
	ctx := ctxT(t)
	if err := b.Declare(ctx, "t", "g"); broker.KindOf(err) != semantics.Unsupported {
		t.Errorf("Declare = %v, want unsupported", err)
	}
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: "t", Group: "g"})
	pub, _ := b.NewPublisher(ctx)
	if err := pub.Publish(ctx, "t", &broker.Message{ID: "m"}); err != nil {
		t.Fatal(err)
	}
	if d := receive(t, sub); d.Message().ID != "m" {
		t.Errorf("got %s", d.Message().ID)
	}
}

// unclosable shares one GoChannel between the subscribers NewSubscriber
// makes, each of which is closed with its queuekit subscriber.
type unclosable struct{ *gochannel.GoChannel }

func (unclosable) Close() error { return nil }

// Options.CheckNames refuses bad names before anything reaches Watermill.
func TestCheckNames(t *testing.T) {
	gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
	cp := &counting{Publisher: gc}
	wb, err := watermill.New(watermill.Options{Publisher: cp, Subscriber: gc,
		CheckNames: func(topic, group string) error {
			if strings.Contains(topic+group, "bad") {
				return errors.New("bad name")
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(wb)
	defer b.Close(context.Background())
	ctx := ctxT(t)
	wb.ConsumedOutside("bad-topic")
	pub, _ := b.NewPublisher(ctx)
	for what, err := range map[string]error{
		"Declare":       b.Declare(ctx, "t", "bad-group"),
		"Publish":       pub.Publish(ctx, "bad-topic", &broker.Message{}),
		"NewSubscriber": func() error { _, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "bad-topic"}); return err }(),
	} {
		if broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s with a bad name: %v, want invalid argument", what, err)
		}
	}
	if n := cp.calls.Load(); n != 0 {
		t.Errorf("the Watermill publisher was called %d times", n)
	}
}

// As reaches the Watermill pub/subs and the bridge's own type.
func TestAs(t *testing.T) {
	b, gc := newGoChannel(t)
	var got *gochannel.GoChannel
	var p message.Publisher
	var wb *watermill.Broker
	if !b.As(&got) || got != gc || !b.As(&p) || !b.As(&wb) {
		t.Errorf("As: GoChannel %v, publisher %v, bridge %v", got, p, wb)
	}
	var s *strings.Builder
	if b.As(&s) {
		t.Error("As(*strings.Builder) = true")
	}
}
