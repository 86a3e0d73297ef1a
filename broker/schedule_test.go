package broker_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// claimed is a memory broker that claims caps instead of its own and
// counts the driver Publish calls that reach it.
type claimed struct {
	*memory.Broker
	caps  semantics.Capabilities
	calls atomic.Int64
}

func (c *claimed) Capabilities() semantics.Capabilities { return c.caps }

func (c *claimed) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	p, err := c.Broker.NewPublisher(ctx)
	if err != nil {
		return nil, err
	}
	return countingPublisher{p, &c.calls}, nil
}

type countingPublisher struct {
	driver.Publisher
	calls *atomic.Int64
}

func (p countingPublisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	p.calls.Add(1)
	return p.Publisher.Publish(ctx, topic, msgs...)
}

func newClaimed(t *testing.T, caps semantics.Capabilities) (*claimed, *broker.Publisher) {
	t.Helper()
	c := &claimed{Broker: memory.New(memory.Options{}), caps: caps}
	b := broker.New(c)
	t.Cleanup(func() { b.Close(context.Background()) })
	if err := b.Declare(t.Context(), "t", "g"); err != nil {
		t.Fatal(err)
	}
	pub, err := b.NewPublisher(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return c, pub
}

// A message scheduled in the future on an adapter that does not claim
// ScheduledDelivery is refused, with its whole batch, before the driver is
// called, by an Unsupported error that names the outbox.
func TestScheduledPublishRefusedWithoutTheClaim(t *testing.T) {
	c, pub := newClaimed(t, semantics.Capabilities{})
	now := &broker.Message{ID: "now"}
	later := &broker.Message{ID: "later", DeliverAt: time.Now().Add(time.Minute)}
	err := pub.Publish(t.Context(), "t", now, later)
	if broker.KindOf(err) != semantics.Unsupported {
		t.Fatalf("Publish of a scheduled message = %v (kind %v); want kind Unsupported", err, broker.KindOf(err))
	}
	for _, want := range []string{"later", "ScheduledDelivery", "outbox", "AddAt"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if n := c.calls.Load(); n != 0 {
		t.Errorf("the driver's Publish was called %d times; want none (refused before any I/O)", n)
	}
	if st, _ := c.Depth("t", "g"); st.Ready+st.Delayed != 0 {
		t.Errorf("the group holds %d ready and %d delayed messages after a refused batch; want none", st.Ready, st.Delayed)
	}

	// A DeliverAt in the past is the same as none: published at once.
	past := &broker.Message{ID: "past", DeliverAt: time.Now().Add(-time.Hour)}
	if err := pub.Publish(t.Context(), "t", past); err != nil {
		t.Fatalf("Publish with DeliverAt in the past: %v", err)
	}
	if st, _ := c.Depth("t", "g"); st.Ready != 1 || st.Delayed != 0 {
		t.Errorf("after publishing with DeliverAt in the past: %d ready, %d delayed; want 1 ready", st.Ready, st.Delayed)
	}
}

// A delay over the adapter's MaxDelay is InvalidArgument, before the
// driver is called; one within it goes through.
func TestScheduledPublishOverMaxDelayRefused(t *testing.T) {
	const maxDelay = 15 * time.Minute
	c, pub := newClaimed(t, semantics.Capabilities{ScheduledDelivery: true, MaxDelay: maxDelay})
	over := &broker.Message{ID: "over", DeliverAt: time.Now().Add(maxDelay + time.Second)}
	err := pub.Publish(t.Context(), "t", &broker.Message{ID: "fine"}, over)
	if broker.KindOf(err) != semantics.InvalidArgument {
		t.Fatalf("Publish %v past MaxDelay = %v (kind %v); want kind InvalidArgument", time.Second, err, broker.KindOf(err))
	}
	for _, want := range []string{"over", "15m0s", "MaxDelay", "outbox"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if n := c.calls.Load(); n != 0 {
		t.Errorf("the driver's Publish was called %d times; want none", n)
	}
	within := &broker.Message{ID: "within", DeliverAt: time.Now().Add(maxDelay - time.Second)}
	if err := pub.Publish(t.Context(), "t", within); err != nil {
		t.Fatalf("Publish within MaxDelay: %v", err)
	}
	if st, _ := c.Depth("t", "g"); st.Delayed != 1 || st.Ready != 0 {
		t.Errorf("after publishing within MaxDelay: %d ready, %d delayed; want 1 delayed", st.Ready, st.Delayed)
	}
	if !within.DeliverAt.After(time.Now()) {
		t.Error("Publish changed the caller's DeliverAt")
	}
}

// Without a cap (MaxDelay 0) any delay is accepted.
func TestScheduledPublishWithoutCap(t *testing.T) {
	c, pub := newClaimed(t, semantics.Capabilities{ScheduledDelivery: true})
	m := &broker.Message{ID: "far", DeliverAt: time.Now().Add(365 * 24 * time.Hour)}
	if err := pub.Publish(t.Context(), "t", m); err != nil {
		t.Fatalf("Publish a year ahead without MaxDelay: %v", err)
	}
	if n := c.calls.Load(); n != 1 {
		t.Errorf("the driver's Publish was called %d times; want 1", n)
	}
}
