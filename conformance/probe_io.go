package conformance

// Talking to the adapter: message ids, publishers, subscribers, receive
// loops and Consume runs, each closed at teardown.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func (p *probe) id(i int) string { return fmt.Sprintf("%s-%04d", p.run, i) }

func index(id string) int {
	i := strings.LastIndexByte(id, '-')
	if i < 0 {
		return -1
	}
	n, err := strconv.Atoi(id[i+1:])
	if err != nil {
		return -1
	}
	return n
}

func (p *probe) messages(from, n, keys int) []*broker.Message {
	msgs := make([]*broker.Message, n)
	for j := range msgs {
		i := from + j
		k := i
		if keys > 0 {
			k = i % keys
		}
		msgs[j] = &broker.Message{
			ID:      p.id(i),
			Key:     "k" + strconv.Itoa(k),
			Payload: []byte("message " + strconv.Itoa(i)),
		}
	}
	return msgs
}

func (p *probe) group(name string) string { return p.topic + "-" + name }

func (p *probe) publisher() (*broker.Publisher, error) {
	pub, err := p.b.NewPublisher(p.ctx)
	if err != nil {
		return nil, fmt.Errorf("NewPublisher: %w", err)
	}
	if pub == nil {
		return nil, errors.New("NewPublisher returned nil and no error")
	}
	p.onClose(pub.Close)
	return pub, nil
}

func (p *probe) subscribe(group string, edit func(*broker.SubscriberOptions)) (*broker.Subscriber, error) {
	o := broker.SubscriberOptions{Topic: p.topic, Group: p.group(group), AckTimeout: p.h.AckTimeout}
	if edit != nil {
		edit(&o)
	}
	sub, err := p.b.NewSubscriber(p.ctx, o)
	if err != nil {
		return nil, fmt.Errorf("NewSubscriber(topic %s, group %s): %w", o.Topic, o.Group, err)
	}
	if sub == nil {
		return nil, errors.New("NewSubscriber returned nil and no error")
	}
	p.onClose(sub.Close)
	return sub, nil
}

func (p *probe) publish(pub *broker.Publisher, led *tally, msgs []*broker.Message, batch int) error {
	for _, m := range msgs {
		led.Published(m.ID, m.Key)
	}
	for len(msgs) > 0 {
		n := min(batch, len(msgs))
		if err := pub.Publish(p.ctx, p.topic, msgs[:n]...); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		msgs = msgs[n:]
	}
	return nil
}

// publishConcurrently publishes each of msgs with a Publish call of its
// own, all the calls at once, and returns the first error. The calls run
// under goSafe, so that an adapter whose Publish panics fails the property
// rather than the test binary.
func (p *probe) publishConcurrently(pub *broker.Publisher, led *tally, msgs []*broker.Message) error {
	for _, m := range msgs {
		led.Published(m.ID, m.Key)
	}
	errs := make(chan error, len(msgs))
	for _, m := range msgs {
		p.goSafe(func() {
			err := errors.New("Publish panicked")
			defer func() { errs <- err }() // runs on a panic too, before goSafe's recover
			err = pub.Publish(p.ctx, p.topic, m)
		})
	}
	var first error
	for range msgs {
		if err := <-errs; err != nil && first == nil {
			first = fmt.Errorf("publish: %w", err)
		}
	}
	return first
}

func (p *probe) publishNew(msgs []*broker.Message, batch int) error {
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	return p.publish(pub, p.led, msgs, batch)
}

func (p *probe) bg() context.Context { return context.WithoutCancel(p.ctx) }

func (p *probe) ack(d *broker.Delivery) {
	if err := d.Ack(p.bg()); err != nil {
		p.failf("Ack(%s): %v", d.Message().ID, err)
	}
}

func (p *probe) nack(d *broker.Delivery, delay time.Duration) {
	if err := d.Nack(p.bg(), delay); err != nil {
		p.failf("Nack(%s, %v): %v", d.Message().ID, delay, err)
	}
}

func (p *probe) receive(sub *broker.Subscriber, fn func(*broker.Delivery)) (stop func()) {
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan struct{})
	p.goSafe(func() {
		defer close(done)
		backoff := 10 * time.Millisecond
		for {
			d, err := sub.Receive(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if broker.KindOf(err) == semantics.Transient {
					select {
					case <-ctx.Done():
						return
					case <-time.After(backoff):
					}
					backoff = min(2*backoff, time.Second)
					continue
				}
				p.abort(fmt.Errorf("Receive: %w", err))
				return
			}
			if d == nil || d.Message() == nil {
				p.abort(errors.New("Receive returned a nil delivery (or message) and no error"))
				return
			}
			backoff = 10 * time.Millisecond
			fn(d)
		}
	})
	return func() {
		cancel()
		if !waitClosed(done, teardownTimeout) {
			p.abort(fmt.Errorf("Receive did not return within %v of its ctx being cancelled", teardownTimeout))
		}
	}
}

type consumer struct {
	cancel  context.CancelFunc
	done    chan struct{}
	result  error
	once    sync.Once
	waitErr error
}

func (c *consumer) stop() error {
	c.cancel()
	return c.wait()
}

func (p *probe) consume(sub *broker.Subscriber, opts broker.ConsumeOptions, h broker.HandlerFunc, after func()) *consumer {
	ctx, cancel := context.WithCancel(p.ctx)
	opts.OnError = func(m *broker.Message, err error) {
		if !errors.Is(err, errInjected) {
			p.consumeError(m, err)
		}
	}
	c := &consumer{cancel: cancel, done: make(chan struct{})}
	p.goSafe(func() {
		defer close(c.done)
		c.result = broker.Consume(ctx, sub, h, opts)
		if after != nil {
			after()
		}
		if ctx.Err() == nil {
			p.abort(fmt.Errorf("Consume returned before it was stopped: %v", c.result))
		}
	})
	return c
}
