package conformance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// The contract properties check what package broker and the driver
// contract make the same on every adapter: topology, reserved headers,
// errors when a context ends, Close order, and a guarantee that is honoured
// or refused, never weakened.

// refused is what a property returns when the adapter refused, as the
// contract allows, what the property would measure: the verdict is
// unsupported, with the adapter's reason.
type refused struct{ err error }

func (r refused) Error() string { return "refused: " + r.err.Error() }

// subscribeOrRefused is subscribe, where an Unsupported error from the
// adapter makes the property unsupported rather than failed.
func (p *probe) subscribeOrRefused(group string, edit func(*broker.SubscriberOptions)) (*broker.Subscriber, error) {
	sub, err := p.subscribe(group, edit)
	if err != nil && broker.KindOf(err) == semantics.Unsupported {
		return nil, refused{err}
	}
	return sub, err
}

// topology.declare: groups declared before anything is published each get
// every message published afterwards, even though their subscribers come
// later (two groups where the adapter claims FanOut, else one).
func topologyDeclare(p *probe) error {
	const n = 5
	// Two groups each get everything only where groups fan out; elsewhere
	// (an SQS queue is the topic's one group) one group is declared.
	names := []string{"a", "b"}
	if !p.caps.FanOut {
		names = names[:1]
	}
	groups := make([]string, len(names))
	for i, g := range names {
		groups[i] = p.group(g)
	}
	if err := p.b.Declare(p.ctx, p.topic, groups...); err != nil {
		return fmt.Errorf("Declare(%s, %v): %w", p.topic, groups, err)
	}
	if err := p.publishNew(p.messages(0, n, 0), n); err != nil {
		return err
	}
	for _, g := range names {
		sub, err := p.subscribe(g, nil)
		if err != nil {
			return err
		}
		got := map[string]bool{}
		stop := p.receive(sub, func(d *broker.Delivery) {
			p.mu.Lock()
			got[d.Message().ID] = true
			p.mu.Unlock()
			p.ack(d)
			p.sig.poke()
		})
		err = p.wait(fmt.Sprintf("group %s, declared before the publish, to receive all %d messages", g, n), func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			return len(got) == n
		})
		stop()
		if err != nil {
			return err
		}
		if g == "a" { // the ledger counts each message once, not once per group
			for _, m := range p.messages(0, n, 0) {
				p.led.Handled(m.ID)
			}
		}
	}
	p.notef("the %d declared group(s) received all %d messages published before their subscribers existed", len(names), n)
	return nil
}

// topology.no-group-refused: a Publish to a topic on which no group was
// ever declared fails with ErrNoGroup — nothing is silently dropped or
// parked where nobody will read it.
func topologyNoGroupRefused(p *probe) error {
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	err = pub.Publish(p.ctx, p.topic, &broker.Message{ID: p.id(0), Payload: []byte("nobody listens")})
	switch {
	case err == nil:
		return errors.New("Publish to a topic without any group returned nil: the message reaches nobody")
	case !errors.Is(err, broker.ErrNoGroup):
		return fmt.Errorf("Publish to a topic without any group = %v (kind %v); want an error matching broker.ErrNoGroup", err, broker.KindOf(err))
	}
	p.notef("refused: %v", err)
	return nil
}

// headers.reserved-refused: a user header named like a reserved one is
// refused before anything is sent.
func headersReservedRefused(p *probe) error {
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	for i, h := range []string{broker.HeaderID, broker.HeaderAttempt} {
		m := &broker.Message{ID: p.id(i), Headers: map[string]string{h: "forged"}}
		if err := pub.Publish(p.ctx, p.topic, m); broker.KindOf(err) != semantics.InvalidArgument {
			return fmt.Errorf("Publish with header %s = %v; want an invalid-argument error", h, err)
		}
	}
	// The refused messages must not arrive; a clean one after them must.
	clean := []*broker.Message{{ID: p.id(9), Payload: []byte("clean")}}
	if err := pub.Publish(p.ctx, p.topic, clean...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	return p.expectSame(sub, clean)
}

// ctx.end-kind: Receive, Publish and NewSubscriber whose context ends return
// an error of kind Canceled matching the context's error.
func ctxEndKind(p *probe) error {
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	check := func(what string, err error, want error) error {
		if broker.KindOf(err) != semantics.Canceled || !errors.Is(err, want) {
			return fmt.Errorf("%s: %v (kind %v); want kind canceled matching %v", what, err, broker.KindOf(err), want)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(p.ctx, 50*time.Millisecond)
	_, rerr := sub.Receive(ctx)
	cancel()
	if err := check("Receive past its deadline", rerr, context.DeadlineExceeded); err != nil {
		return err
	}
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	cctx, ccancel := context.WithCancel(p.ctx)
	ccancel()
	if err := check("Publish with a cancelled ctx", pub.Publish(cctx, p.topic, &broker.Message{ID: p.id(0)}), context.Canceled); err != nil {
		return err
	}
	_, serr := p.b.NewSubscriber(cctx, broker.SubscriberOptions{Topic: p.topic, Group: p.group("late")})
	return check("NewSubscriber with a cancelled ctx", serr, context.Canceled)
}

// close.order: Broker.Close closes what the broker made, subscribers first,
// then publishers (which flush), then the connection; every later call on
// them returns ErrClosed, and a second Close returns nil. (That a publish
// confirmed before the Close is kept is close.publisher-flush's business.)
func closeOrder(p *probe) error {
	b, err := p.open()
	if err != nil {
		return err
	}
	o := broker.SubscriberOptions{Topic: p.topic, Group: p.group("g"), AckTimeout: p.h.AckTimeout}
	sub, err := b.NewSubscriber(p.ctx, o)
	if err != nil {
		return fmt.Errorf("NewSubscriber: %w", err)
	}
	pub, err := b.NewPublisher(p.ctx)
	if err != nil {
		return fmt.Errorf("NewPublisher: %w", err)
	}
	if err := pub.Publish(p.ctx, p.topic, p.messages(0, 3, 0)...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	ctx, cancel := context.WithTimeout(p.ctx, teardownTimeout)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		return fmt.Errorf("Broker.Close with an open publisher and subscriber: %w", err)
	}
	if err := pub.Publish(p.ctx, p.topic, &broker.Message{}); !errors.Is(err, broker.ErrClosed) {
		return fmt.Errorf("Publish after Broker.Close = %v; want ErrClosed", err)
	}
	if _, err := sub.Receive(p.ctx); !errors.Is(err, broker.ErrClosed) {
		return fmt.Errorf("Receive after Broker.Close = %v; want ErrClosed", err)
	}
	if err := b.Close(ctx); err != nil {
		return fmt.Errorf("second Broker.Close = %v; want nil", err)
	}
	p.notef("Broker.Close closed its open publisher and subscriber; later calls returned ErrClosed")
	return nil
}
