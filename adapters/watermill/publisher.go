package watermill

import (
	"context"
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// publisher is a queuekit driver publisher over the Broker's Watermill
// publisher.
type publisher struct {
	b  *Broker
	op string

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup // Publish calls in progress
}

// Publish hands the messages to the Watermill publisher one at a time, in
// order, so that a failure names the message that failed; the messages
// after it are not attempted. Watermill's Publish has no context: each
// message carries ctx (message.Message.Context), and ctx is checked between
// messages.
func (p *publisher) Publish(ctx context.Context, topic string, msgs ...*driver.Message) error {
	if err := p.b.checkNames(p.op, topic, ""); err != nil {
		return err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return driver.ErrClosed
	}
	p.inflight.Add(1)
	p.mu.Unlock()
	defer p.inflight.Done()
	for i, m := range msgs {
		if err := ctx.Err(); err != nil {
			return notPublished(msgs, i, driver.Canceled(p.op, err))
		}
		wm := ToWatermill(m)
		if p.b.opts.CopyPayload && m.Payload != nil {
			wm.Payload = append(message.Payload(nil), m.Payload...)
		}
		wm.SetContext(ctx)
		if err := p.b.opts.Publisher.Publish(topic, wm); err != nil {
			// Watermill errors carry no classification; a failed send is
			// worth retrying more often than not.
			return notPublished(msgs, i, driver.WrapError(semantics.Transient, p.op, err))
		}
	}
	return nil
}

// notPublished reports msgs[from:] as failed: msgs[from] with err, the rest
// as not attempted.
func notPublished(msgs []*driver.Message, from int, err error) error {
	pe := &driver.PublishError{}
	for i := from; i < len(msgs); i++ {
		e := err
		if i > from {
			e = &driver.Error{Kind: driver.KindOf(err), Err: errors.New("not attempted: an earlier message of the batch failed")}
		}
		pe.Failed = append(pe.Failed, driver.PublishFailure{Index: i, ID: msgs[i].ID, Err: e})
	}
	return pe
}

// Close waits (no longer than ctx) for the Publish calls in progress to
// finish the batches they are handing to Watermill; later ones return
// ErrClosed. Watermill publishers are synchronous or flush in their own
// Close, which Broker.Close calls after.
func (p *publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return within(ctx, p.op+": close, waiting for the publishes in progress", func() error {
		p.inflight.Wait()
		return nil
	})
}
