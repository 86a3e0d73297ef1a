package nats

import (
	"context"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// publisher publishes asynchronously on a JetStream context of its own,
// with at most window messages awaiting their ack, and returns from
// Publish once JetStream acknowledged (stored) every message. Acks come
// back through the JetStream context's callbacks, which find the
// message's Publish call in pending.
type publisher struct {
	b      *Broker
	js     jetstream.JetStream
	window int // Options.PublishWindow

	pmu     sync.Mutex
	pending map[*nats.Msg]slot // sent, outcome not seen
	room    chan struct{}      // while a call waits for room: closed when pending is down to lowWater

	mu     sync.RWMutex
	closed bool
	active sync.WaitGroup // Publish calls under way
}

// slot is a message of a Publish call.
type slot struct {
	c *call
	i int
}

// call is one Publish call waiting for its acks.
type call struct {
	left   atomic.Int64  // 1 (the caller's, until all is sent) + messages whose outcome is unknown
	done   chan struct{} // closed when left reaches 0
	mu     sync.Mutex
	failed []driver.PublishFailure
}

func (c *call) finish(err error, i int) {
	if err != nil {
		c.mu.Lock()
		c.failed = append(c.failed, driver.PublishFailure{Index: i, Err: err})
		c.mu.Unlock()
	}
	if c.left.Add(-1) == 0 {
		close(c.done)
	}
}

var _ driver.As = (*publisher)(nil)

// NewPublisher returns a publisher to any topic.
func (b *Broker) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	if b.isClosed() {
		return nil, driver.ErrClosed
	}
	p := &publisher{b: b, window: b.opts.PublishWindow, pending: make(map[*nats.Msg]slot)}
	// The window is what waits, not nats.go (whose bound is set out of
	// reach); and each call keeps one timer for publish_timeout rather
	// than nats.go one per message. A message given up on (timeout, ctx)
	// stays in nats.go's books until its ack comes late or the connection
	// drops.
	js, err := newJetStream(b.nc, b.opts,
		jetstream.WithPublishAsyncMaxPending(math.MaxInt32),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) { p.outcome(m, nil) }),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) { p.outcome(m, err) }))
	if err != nil {
		return nil, wrap("nats: new publisher", err)
	}
	p.js = js
	return p, nil
}

// take removes m from pending, waking a call that waits for room once the
// window is down to three quarters (one wake-up per quarter window, not
// per ack).
func (p *publisher) take(m *nats.Msg) (slot, bool) {
	p.pmu.Lock()
	s, ok := p.pending[m]
	if ok {
		delete(p.pending, m)
		if p.room != nil && len(p.pending) <= p.window-max(1, p.window/4) {
			close(p.room)
			p.room = nil
		}
	}
	p.pmu.Unlock()
	return s, ok
}

// outcome records the ack (err nil) or failure of message m.
func (p *publisher) outcome(m *nats.Msg, err error) {
	s, ok := p.take(m)
	if !ok {
		return // its call gave up on it
	}
	// m may still be in PublishMsgAsync (nats.go fails its pending acks
	// when the connection drops, whoever is publishing): leave it alone.
	s.c.finish(err, s.i)
}

// As sets a *jetstream.JetStream to the publisher's JetStream context.
func (p *publisher) As(target any) bool {
	if t, ok := target.(*jetstream.JetStream); ok {
		*t = p.js
		return true
	}
	return false
}

// Publish sends msgs to the subject topic, PublishWindow at a time, and
// waits for JetStream's ack of each. Messages whose encoding exceeds the
// server's max_payload, or that carry a header named like one the adapter
// writes, fail the whole call before anything is sent.
func (p *publisher) Publish(ctx context.Context, topic string, msgs ...*driver.Message) error {
	const op = "nats: publish"
	if err := checkTopic(op, "topic", topic); err != nil {
		return err
	}
	max := int(p.b.nc.MaxPayload())
	nm := make([]nats.Msg, len(msgs))
	for i, m := range msgs {
		for k := range m.Headers {
			if ownHeader(k) {
				return driver.Errorf(semantics.InvalidArgument, op, "message %s: header %q is the adapter's own (it carries the key or packed headers)", m.ID, k)
			}
		}
		if size := encodeInto(&nm[i], topic, m); size > max {
			return &driver.Error{Kind: semantics.InvalidArgument, Op: op,
				Err: &driver.TooLargeError{ID: m.ID, Size: size, Max: max}}
		}
	}
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return driver.ErrClosed
	}
	p.active.Add(1)
	p.mu.RUnlock()
	defer p.active.Done()

	c := &call{done: make(chan struct{})}
	c.left.Store(1)
	timer := time.NewTimer(p.b.opts.PublishTimeout)
	defer timer.Stop()
	var giveUp error // why the call stopped waiting
	sent := 0
	for sent < len(nm) && giveUp == nil {
		// Take as much of the window as is free, at once.
		p.pmu.Lock()
		free := p.window - len(p.pending)
		if free <= 0 {
			if p.room == nil {
				p.room = make(chan struct{})
			}
			room := p.room
			p.pmu.Unlock()
			select {
			case <-room:
			case <-ctx.Done():
				giveUp = driver.Canceled(op, ctx.Err())
			case <-timer.C:
				giveUp = p.timeout(op)
			}
			continue
		}
		k := min(free, len(nm)-sent)
		c.left.Add(int64(k))
		for j := sent; j < sent+k; j++ {
			p.pending[&nm[j]] = slot{c: c, i: j}
		}
		p.pmu.Unlock()
		for j := sent; j < sent+k; j++ {
			if _, err := p.js.PublishMsgAsync(&nm[j]); err != nil {
				if _, mine := p.take(&nm[j]); mine {
					c.finish(err, j)
				}
			}
		}
		sent += k
	}
	if c.left.Add(-1) != 0 {
		if giveUp == nil {
			select {
			case <-c.done:
			case <-ctx.Done():
				giveUp = driver.Canceled(op, ctx.Err())
			case <-timer.C:
				giveUp = p.timeout(op)
			}
		}
		if giveUp != nil {
			// Give up on what has no outcome yet: take it back from
			// pending (a late ack then finds nothing), count it failed.
			for j := range sent {
				if _, mine := p.take(&nm[j]); mine {
					c.finish(giveUp, j)
				}
			}
			<-c.done // outcomes being recorded right now
		}
	}
	if giveUp == nil {
		// nats.go is done with every message sent: its outcome came.
		for i := range sent {
			recycleHeader(nm[i].Header)
		}
	}
	failed := c.failed
	for i := sent; i < len(nm); i++ {
		failed = append(failed, driver.PublishFailure{Index: i, Err: giveUp})
	}
	if len(failed) == 0 {
		return nil
	}
	for j := range failed {
		f := &failed[j]
		f.ID = msgs[f.Index].ID
		if f.Err != giveUp {
			f.Err = p.ackError(op, topic, f.Err)
		}
	}
	slices.SortFunc(failed, func(a, b driver.PublishFailure) int { return a.Index - b.Index })
	return &driver.PublishError{Failed: failed}
}

// ackError classifies the error nats.go reported for a message.
func (p *publisher) ackError(op, topic string, err error) error {
	if isNoStream(err) {
		return noStream(op, topic, err)
	}
	return wrap(op, err)
}

// timeout is the error of messages whose ack did not come within
// publish_timeout.
func (p *publisher) timeout(op string) error {
	return driver.Errorf(semantics.Transient, op, "no ack from JetStream within %v (publish_timeout): the message may or may not be stored", p.b.opts.PublishTimeout)
}

// Close waits (within ctx) for the Publish calls under way to see their
// acks; no Publish starts after it. Once they are over (even after ctx
// ended) the JetStream context's reply subscription is removed from the
// connection, with what nats.go still keeps of acks given up on. It does
// not close the connection.
func (p *publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		p.active.Wait()
		// Without this each closed publisher would leave a subscription
		// (and nats.go's goroutine serving it) on the shared connection.
		p.js.CleanupPublisher()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return driver.Canceled("nats: close publisher", ctx.Err())
	}
}
