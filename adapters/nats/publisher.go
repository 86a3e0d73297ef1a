package nats

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// publisher publishes asynchronously with at most window messages
// awaiting their ack, and returns from Publish once JetStream acknowledged
// (stored) every message.
//
// It does what jetstream's PublishMsgAsync does, with less per message:
// each message gets a reply subject under the publisher's own inbox, and
// the ack that comes back there finds its Publish call in pending by the
// number that ends the subject. An ack is recognised as such by its first
// bytes (nats-server writes a failure's "error" first), so only a failure
// is decoded as JSON; nats.go's version decodes every ack and keeps a
// future in a map under a reply-token string per message, and so spends
// about a third more of the client's CPU per message on the same bytes.
type publisher struct {
	b      *Broker
	js     jetstream.JetStream // for As only
	window int                 // Options.PublishWindow

	smu    sync.Mutex         // over the three below, set by listen
	inbox  string             // "<inbox>.": the replies come to inbox.<id>
	sub    *nats.Subscription // of inbox.*
	status chan nats.Status   // the connection's RECONNECTING and CLOSED

	pmu     sync.Mutex
	next    uint64          // the id of the next message sent
	pending map[uint64]slot // sent, outcome not seen
	room    chan struct{}   // while a call waits for room: closed when pending is down to lowWater

	mu     sync.RWMutex
	closed bool
	active sync.WaitGroup // Publish calls under way
}

// slot is a message of a Publish call.
type slot struct {
	c       *call
	i       int
	m       *nats.Msg
	retries int // sends again after "no responders"
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

// What jetstream's publisher does when a stream has no responder yet (a
// stream being created, or its leader being elected): it sends the message
// again twice, 250 ms apart, before the publish fails with
// ErrNoStreamResponse.
const (
	noResponderRetries = 2
	noResponderWait    = 250 * time.Millisecond
)

var _ driver.As = (*publisher)(nil)

// NewPublisher returns a publisher to any topic.
func (b *Broker) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	if b.isClosed() {
		return nil, driver.ErrClosed
	}
	js, err := newJetStream(b.nc, b.opts)
	if err != nil {
		return nil, wrap("nats: new publisher", err)
	}
	return &publisher{b: b, js: js, window: b.opts.PublishWindow, pending: make(map[uint64]slot)}, nil
}

// listen subscribes to the publisher's inbox on its first Publish (as
// jetstream's publisher does: NewPublisher does no I/O).
func (p *publisher) listen() error {
	p.smu.Lock()
	defer p.smu.Unlock()
	if p.sub != nil {
		return nil
	}
	inbox := p.b.nc.NewInbox() + "."
	// The acks of messages sent before a reconnect may never come: they
	// fail (Transient) as soon as the connection drops, as with nats.go.
	status := p.b.nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	sub, err := p.b.nc.Subscribe(inbox+"*", p.reply)
	if err != nil {
		p.b.nc.RemoveStatusListener(status)
		return err
	}
	p.inbox, p.status, p.sub = inbox, status, sub
	go p.watch(status)
	return nil
}

// watch fails every message awaiting its ack when the connection drops,
// until the connection closes or the publisher removes the listener.
func (p *publisher) watch(status <-chan nats.Status) {
	for s := range status {
		if s == nats.CLOSED {
			p.failPending(nats.ErrConnectionClosed)
			return
		}
		p.failPending(nats.ErrDisconnected)
	}
}

// failPending reports every message awaiting its ack failed with err.
func (p *publisher) failPending(err error) {
	p.pmu.Lock()
	slots := make([]slot, 0, len(p.pending))
	for id, s := range p.pending {
		slots = append(slots, s)
		delete(p.pending, id)
	}
	p.wake()
	p.pmu.Unlock()
	for _, s := range slots {
		s.c.finish(err, s.i)
	}
}

// wake wakes a call that waits for room once the window is down to three
// quarters (one wake-up per quarter window, not per ack). p.pmu is held.
func (p *publisher) wake() {
	if p.room != nil && len(p.pending) <= p.window-max(1, p.window/4) {
		close(p.room)
		p.room = nil
	}
}

// take removes message id from pending.
func (p *publisher) take(id uint64) (slot, bool) {
	p.pmu.Lock()
	s, ok := p.pending[id]
	if ok {
		delete(p.pending, id)
		p.wake()
	}
	p.pmu.Unlock()
	return s, ok
}

// takeCall removes the messages of call c from pending.
func (p *publisher) takeCall(c *call) []slot {
	var slots []slot
	p.pmu.Lock()
	for id, s := range p.pending {
		if s.c == c {
			slots = append(slots, s)
			delete(p.pending, id)
		}
	}
	p.wake()
	p.pmu.Unlock()
	return slots
}

// reply handles what came back to the reply subject of a message: its
// ack, JetStream's error, or the server's "no responders".
func (p *publisher) reply(m *nats.Msg) {
	id, err := strconv.ParseUint(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], 36, 64)
	if err != nil {
		return // not a subject of ours
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		p.noResponders(id)
		return
	}
	s, ok := p.take(id)
	if !ok {
		return // its call gave up on it
	}
	s.c.finish(ackOutcome(m.Data), s.i)
}

// ackOutcome is nil for a JetStream ack, and otherwise the error the reply
// carries.
func ackOutcome(data []byte) error {
	// {"stream":"<name>",...}: an ack (the server writes "error" first).
	const ack = `{"stream":"`
	if len(data) > len(ack) && string(data[:len(ack)]) == ack && data[len(ack)] != '"' {
		return nil
	}
	var r struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return jetstream.ErrInvalidJSAck
	}
	if r.Error != nil {
		return r.Error
	}
	if r.Stream == "" {
		return jetstream.ErrInvalidJSAck
	}
	return nil
}

// noResponders sends message id again after noResponderWait, or fails it
// with ErrNoStreamResponse after noResponderRetries.
func (p *publisher) noResponders(id uint64) {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	s, ok := p.pending[id]
	if !ok {
		return // its call gave up on it
	}
	if s.retries == noResponderRetries {
		delete(p.pending, id)
		p.wake()
		s.c.finish(jetstream.ErrNoStreamResponse, s.i)
		return
	}
	s.retries++
	p.pending[id] = s
	time.AfterFunc(noResponderWait, func() {
		// Under the lock: once the message is out of pending its call
		// may end and give its header to another message.
		p.pmu.Lock()
		defer p.pmu.Unlock()
		if _, ok := p.pending[id]; !ok {
			return // its call gave up on it, or the connection dropped
		}
		if err := p.b.nc.PublishMsg(s.m); err != nil {
			delete(p.pending, id)
			p.wake()
			s.c.finish(err, s.i)
		}
	})
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
	if err := p.listen(); err != nil {
		return wrap(op, err)
	}

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
		first := p.next
		p.next += uint64(k)
		for j := sent; j < sent+k; j++ {
			id := first + uint64(j-sent)
			nm[j].Reply = p.inbox + strconv.FormatUint(id, 36)
			p.pending[id] = slot{c: c, i: j, m: &nm[j]}
		}
		p.pmu.Unlock()
		for j := sent; j < sent+k; j++ {
			if err := p.b.nc.PublishMsg(&nm[j]); err != nil {
				if _, mine := p.take(first + uint64(j-sent)); mine {
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
			for _, s := range p.takeCall(c) {
				c.finish(giveUp, s.i)
			}
			<-c.done // outcomes being recorded right now
		}
	}
	if giveUp == nil {
		// Every message sent has its outcome, and nats.go wrote each to
		// its buffer in PublishMsg: the headers can serve again.
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

// ackError classifies the error a message failed with.
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
// ended) the publisher's reply subscription is removed from the
// connection. It does not close the connection.
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
		p.smu.Lock()
		if p.sub != nil {
			_ = p.sub.Unsubscribe() // fails only on a closed connection, which has no subscription left
			p.b.nc.RemoveStatusListener(p.status)
		}
		p.smu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return driver.Canceled("nats: close publisher", ctx.Err())
	}
}
