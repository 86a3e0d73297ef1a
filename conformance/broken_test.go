package conformance

import (
	"context"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// The suite must be able to fail. Each broken adapter below wraps the honest
// memory adapter and breaks one promise the way real adapters get it wrong;
// the suite runs against it and exactly the properties that check that
// promise must fail, the rest pass.

// brokenBroker wraps the publishers and subscribers of a memory broker.
type brokenBroker struct {
	broker.Broker
	wrapPub func(broker.Publisher) broker.Publisher
	wrapSub func(broker.Subscriber) broker.Subscriber
}

func (b *brokenBroker) NewPublisher(ctx context.Context) (broker.Publisher, error) {
	p, err := b.Broker.NewPublisher(ctx)
	if err != nil || b.wrapPub == nil {
		return p, err
	}
	return b.wrapPub(p), nil
}

func (b *brokenBroker) NewSubscriber(ctx context.Context, o broker.SubscriberOptions) (broker.Subscriber, error) {
	s, err := b.Broker.NewSubscriber(ctx, o)
	if err != nil || b.wrapSub == nil {
		return s, err
	}
	return b.wrapSub(s), nil
}

// ackOnReceive acks every delivery as soon as it is received, before anyone
// handled it; Ack and Nack of the delivery it hands out do nothing (but stay
// idempotent, so only broker behaviour is wrong). A consumer that crashes or
// fails loses the message.
type ackOnReceive struct{ broker.Subscriber }

func (s ackOnReceive) Receive(ctx context.Context) (broker.Delivery, error) {
	d, err := s.Subscriber.Receive(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.Ack(ctx); err != nil {
		return nil, err
	}
	return &inertDelivery{msg: d.Message()}, nil
}

// inertDelivery settles nothing on the broker.
type inertDelivery struct {
	msg *broker.Message
	s   broker.Settlement
}

func (d *inertDelivery) Message() *broker.Message { return d.msg }
func (d *inertDelivery) Ack(context.Context) error {
	_, err := d.s.Ack()
	return err
}
func (d *inertDelivery) Nack(context.Context, time.Duration) error {
	_, err := d.s.Nack()
	return err
}

// dropOnePercent silently drops every 100th message published through the
// broker and still returns nil.
type dropOnePercent struct {
	broker.Publisher
	n *atomic.Int64
}

func (p dropOnePercent) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	if err := broker.Prepare("broken: publish", msgs, 0); err != nil {
		return err
	}
	keep := make([]*broker.Message, 0, len(msgs))
	for _, m := range msgs {
		if p.n.Add(1)%100 != 0 {
			keep = append(keep, m)
		}
	}
	if len(keep) == 0 {
		return nil
	}
	return p.Publisher.Publish(ctx, topic, keep...)
}

// reverseBatches publishes the messages of each call in reverse order.
type reverseBatches struct{ broker.Publisher }

func (p reverseBatches) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	rev := slices.Clone(msgs)
	slices.Reverse(rev)
	return p.Publisher.Publish(ctx, topic, rev...)
}

// replayAcked hands every acked message out once more, like a client that
// commits the wrong offset and reads acked messages again: harmless under
// at-least-once (a duplicate), fatal to at-most-once.
type replayAcked struct {
	broker.Subscriber
	mu     sync.Mutex
	queue  []broker.Delivery
	ready  chan struct{} // closed and replaced when queue grows
	closed bool
}

func newReplayAcked(s broker.Subscriber) broker.Subscriber {
	return &replayAcked{Subscriber: s, ready: make(chan struct{})}
}

func (s *replayAcked) push(d broker.Delivery) {
	s.mu.Lock()
	s.queue = append(s.queue, d)
	close(s.ready)
	s.ready = make(chan struct{})
	s.mu.Unlock()
}

func (s *replayAcked) pop() (broker.Delivery, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 {
		d := s.queue[0]
		s.queue = s.queue[1:]
		return d, nil
	}
	return nil, s.ready
}

func (s *replayAcked) Receive(ctx context.Context) (broker.Delivery, error) {
	d, ready := s.pop()
	if d != nil {
		return d, nil
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-ready:
			cancel()
		case <-rctx.Done():
		}
	}()
	got, err := s.Subscriber.Receive(rctx)
	if err != nil {
		if ctx.Err() == nil && rctx.Err() != nil {
			if d, _ := s.pop(); d != nil {
				return d, nil
			}
			return s.Receive(ctx)
		}
		return nil, err
	}
	return &replayOnAck{Delivery: got, s: s}, nil
}

type replayOnAck struct {
	broker.Delivery
	s *replayAcked
}

func (d *replayOnAck) Ack(ctx context.Context) error {
	err := d.Delivery.Ack(ctx)
	if err == nil {
		d.s.push(&inertDelivery{msg: d.Message()})
	}
	return err
}

// claimsNothing hides every capability of the broker it wraps.
type claimsNothing struct{ broker.Broker }

func (claimsNothing) Capabilities() semantics.Capabilities { return semantics.Capabilities{} }

type brokenCase struct {
	name    string
	wrapPub func() func(broker.Publisher) broker.Publisher // per Open
	wrapSub func(broker.Subscriber) broker.Subscriber
	hide    bool     // claim no capabilities
	fail    []string // exactly these fail...
	because string   // ...each with this count above zero: lost, duplicates or reordered
	unsup   []string // exactly these are unsupported; every other property passes
}

var brokenCases = []brokenCase{
	{name: "honest"},
	{
		name:    "ack-on-receive",
		wrapSub: func(s broker.Subscriber) broker.Subscriber { return ackOnReceive{s} },
		// Everything that needs a message to come back after a nack, a
		// crash, a handler failure or a shutdown.
		fail: []string{"alo.nack-redelivers", "alo.crash-redelivers", "alo.no-loss", "nack.delay",
			"dlq.after-max-attempts", "close.graceful-consume", "ack.idempotent", "attempt.count"},
		because: "lost",
	},
	{
		name: "drop-1%",
		wrapPub: func() func(broker.Publisher) broker.Publisher {
			n := new(atomic.Int64) // one count per broker: every 100th message of a property
			return func(p broker.Publisher) broker.Publisher { return dropOnePercent{p, n} }
		},
		// The properties that publish 100 messages or more.
		fail:    []string{"alo.no-loss", "order.per-key"},
		because: "lost",
	},
	{
		name: "reorder",
		wrapPub: func() func(broker.Publisher) broker.Publisher {
			return func(p broker.Publisher) broker.Publisher { return reverseBatches{p} }
		},
		fail:    []string{"order.per-key"},
		because: "reordered",
	},
	{
		name:    "redeliver-acked",
		wrapSub: newReplayAcked,
		fail:    []string{"amo.no-redelivery"},
		because: "duplicates",
	},
	{
		name: "claims-nothing",
		hide: true,
		unsup: []string{"alo.crash-redelivers", "group.competing", "group.fanout", "order.per-key", "nack.delay",
			"dlq.after-max-attempts", "publish.oversize-refused", "attempt.count"},
	},
}

// brokenHarness runs fast: short ack timeout, 300 messages (enough for the
// 1% dropper to drop 3), and a short timeout since the failing properties
// wait for it.
func brokenHarness(c brokenCase) Harness {
	return Harness{
		Name: c.name,
		Open: func(context.Context) (broker.Broker, error) {
			b := &brokenBroker{Broker: memory.New(memory.Options{}), wrapSub: c.wrapSub}
			if c.wrapPub != nil {
				b.wrapPub = c.wrapPub()
			}
			if c.hide {
				return claimsNothing{b}, nil
			}
			return b, nil
		},
		AckTimeout: time.Second,
		Messages:   300,
		Timeout:    5 * time.Second,
	}
}

func TestSuiteCatchesBrokenAdapters(t *testing.T) {
	for _, c := range brokenCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			rep, err := check(context.Background(), brokenHarness(c), len(properties))
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Results) != len(properties) {
				t.Fatalf("%d results for %d properties", len(rep.Results), len(properties))
			}
			for _, res := range rep.Results {
				t.Logf("%-26s %-11s %5.1fs published %d handled %d lost %d dup %d reordered %d  %s",
					res.Property, res.Verdict, res.Elapsed.Seconds(), res.Published, res.Handled, res.Lost, res.Duplicates, res.Reordered, res.Detail)
				if res.Verdict == Fail && c.because != "" {
					n := map[string]int{"lost": res.Lost, "duplicates": res.Duplicates, "reordered": res.Reordered}[c.because]
					if n == 0 {
						t.Errorf("%s failed, but not because of %s: %s", res.Property, c.because, res.Detail)
					}
				}
				if res.Verdict == Fail && res.Detail == "" {
					t.Errorf("%s failed with no detail", res.Property)
				}
			}
			v := rep.Verdicts()
			for _, w := range []struct {
				verdict Verdict
				want    []string
			}{{Fail, c.fail}, {Unsupported, c.unsup}} {
				got, want := slices.Clone(v[w.verdict]), slices.Clone(w.want)
				sort.Strings(got)
				sort.Strings(want)
				if !slices.Equal(got, want) {
					t.Errorf("%s properties = %v, want exactly %v", w.verdict, got, want)
				}
			}
		})
	}
}

// panicky panics in Receive.
type panicky struct{ broker.Subscriber }

func (panicky) Receive(context.Context) (broker.Delivery, error) { panic("adapter bug") }

// A panicking adapter fails its properties instead of crashing the test
// binary.
func TestPanickingAdapterFails(t *testing.T) {
	for name, open := range map[string]func(context.Context) (broker.Broker, error){
		"open": func(context.Context) (broker.Broker, error) { panic("adapter bug") },
		"receive": func(context.Context) (broker.Broker, error) {
			return &brokenBroker{Broker: memory.New(memory.Options{}), wrapSub: func(s broker.Subscriber) broker.Subscriber { return panicky{s} }}, nil
		},
	} {
		rep, err := Check(t.Context(), Harness{Name: name, Open: open, Timeout: 5 * time.Second}, "roundtrip")
		if err != nil {
			t.Fatal(err)
		}
		if res := rep.Results[0]; res.Verdict != Fail || !strings.Contains(res.Detail, "panic: adapter bug") {
			t.Errorf("panic in %s: verdict %s, detail %q; want fail naming the panic", name, res.Verdict, res.Detail)
		}
	}
}
