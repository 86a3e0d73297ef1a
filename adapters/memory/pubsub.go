package memory

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// publisher implements broker.Publisher.
type publisher struct {
	b      *Broker
	closed atomic.Bool
	done   chan struct{} // closed by close: wakes a Publish waiting for room
	last   atomic.Pointer[topic]
}

// Publish copies msgs into every group of topic, waiting for room in each.
// It returns once they are queued: there is nothing more durable in memory.
func (p *publisher) Publish(ctx context.Context, topicName string, msgs ...*broker.Message) error {
	const op = "mem: publish"
	if p.closed.Load() {
		return broker.ErrClosed
	}
	if topicName == "" {
		return broker.Errorf(semantics.InvalidArgument, op, "topic is required")
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := broker.Prepare(op, msgs, p.b.maxSize); err != nil {
		return err
	}
	t := p.last.Load()
	if t == nil || t.name != topicName {
		var err error
		if t, err = p.b.c.topic(topicName); err != nil {
			return err
		}
		p.last.Store(t)
	}
	targets := *t.targets.Load()
	n, G := len(msgs), len(targets)

	// Copy: one allocation for the entries of every group, and one per
	// message with headers; small payloads share chunks (see copyPayload).
	ents := make([]entry, n*G)
	for i, m := range msgs {
		e := &ents[i]
		e.init(m, targets[0])
		if len(m.Payload) > 0 {
			e.first.msg.Payload = copyPayload(m.Payload)
		}
		if m.Headers != nil {
			e.first.msg.Headers = maps.Clone(m.Headers)
		}
		for gi := 1; gi < G; gi++ {
			ents[gi*n+i].init(&e.first.msg, targets[gi])
		}
	}

	if G == 1 { // fast path: room for everything in the only group
		g := targets[0]
		g.lock()
		if !g.closed && g.cap-g.count >= n {
			g.count += n
			g.insertLocked(ents)
			g.unlock()
			return nil
		}
		g.unlock()
	}

	var resBuf [4]int
	res := resBuf[:0]
	if G <= len(resBuf) {
		res = resBuf[:G]
	} else {
		res = make([]int, G)
	}
	for done := 0; done < n; {
		chunk := n - done
		for gi, g := range targets {
			k, err := g.reserve(ctx, chunk, p.done)
			if err != nil {
				for j := range gi {
					targets[j].unreserve(res[j])
				}
				return publishFailed(op, msgs, done, err)
			}
			res[gi] = k
			chunk = min(chunk, k)
		}
		for gi, g := range targets {
			if extra := res[gi] - chunk; extra > 0 {
				g.unreserve(extra)
			}
			if !g.insert(ents[gi*n+done : gi*n+done+chunk]) {
				return publishFailed(op, msgs, done, broker.ErrClosed)
			}
		}
		done += chunk
	}
	return nil
}

// Payloads up to chunkedMax bytes are copied into shared chunks of chunkSize
// bytes instead of an allocation each. A chunk stays in memory while any
// message copied into it is referenced.
const (
	chunkSize  = 8 << 10
	chunkedMax = 512
)

type chunk struct{ buf []byte }

var chunks sync.Pool // of *chunk with room left

// copyPayload returns a copy of p (len > 0) whose capacity ends with it, so
// that an append by the receiver cannot touch a neighbour.
func copyPayload(p []byte) []byte {
	if len(p) > chunkedMax {
		return append([]byte(nil), p...)
	}
	c, _ := chunks.Get().(*chunk)
	if c == nil || cap(c.buf)-len(c.buf) < len(p) {
		c = &chunk{buf: make([]byte, 0, chunkSize)}
	}
	start := len(c.buf)
	c.buf = append(c.buf, p...)
	out := c.buf[start:len(c.buf):len(c.buf)]
	if cap(c.buf)-len(c.buf) >= 16 {
		chunks.Put(c)
	}
	return out
}

// publishFailed reports msgs[done:] as not published because of err.
func publishFailed(op string, msgs []*broker.Message, done int, err error) error {
	if err != broker.ErrClosed {
		err = broker.WrapError(semantics.Transient, op, err)
	}
	if done == 0 {
		return err
	}
	pe := &broker.PublishError{Failed: make([]broker.PublishFailure, 0, len(msgs)-done)}
	for i := done; i < len(msgs); i++ {
		pe.Failed = append(pe.Failed, broker.PublishFailure{Index: i, ID: msgs[i].ID, Err: err})
	}
	return pe
}

// Close makes later Publish calls (and one waiting for room) return
// broker.ErrClosed. Nothing is buffered, so there is nothing to flush.
func (p *publisher) Close(ctx context.Context) error {
	p.close()
	p.b.forgetPublisher(p)
	return nil
}

func (p *publisher) close() {
	if p.closed.CompareAndSwap(false, true) {
		close(p.done)
	}
}

// subscriber implements broker.Subscriber and broker.BatchReceiver.
type subscriber struct {
	b           *Broker
	g           *group
	topic       string
	ackTimeout  int64
	maxAttempts int
	dlq         string
	prefetch    int
	credit      chan struct{} // signalled when s.n drops below prefetch
	done        chan struct{} // closed by close

	// guarded by g.mu
	head, tail *delivery // in flight, oldest (earliest deadline) first
	n          int
	closed     bool
	creditWait bool
}

var (
	_ broker.Subscriber    = (*subscriber)(nil)
	_ broker.BatchReceiver = (*subscriber)(nil)
)

// Receive waits for one delivery.
func (s *subscriber) Receive(ctx context.Context) (broker.Delivery, error) {
	var buf [1]broker.Delivery
	if _, err := s.g.receive(ctx, s, buf[:]); err != nil {
		return nil, err
	}
	return buf[0], nil
}

// ReceiveBatch waits for at least one delivery and returns up to len(buf).
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []broker.Delivery) (int, error) {
	if len(buf) == 0 {
		return 0, broker.Errorf(semantics.InvalidArgument, "mem: receive", "empty buffer")
	}
	return s.g.receive(ctx, s, buf)
}

// Close stops the subscriber: a waiting Receive returns broker.ErrClosed
// and the unsettled deliveries are made available to the group's other
// subscribers at once (their late Ack returns ErrExpired).
func (s *subscriber) Close(ctx context.Context) error {
	s.close()
	s.b.forgetSubscriber(s)
	return nil
}

func (s *subscriber) close() {
	g := s.g
	g.lock()
	defer g.unlock()
	if s.closed {
		return
	}
	s.closed = true
	g.releaseLocked(s)
	for i, x := range g.subs {
		if x == s {
			g.subs = append(g.subs[:i], g.subs[i+1:]...)
			break
		}
	}
	close(s.done)
}
