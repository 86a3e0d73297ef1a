package memory

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/keytab"
	"github.com/queuekit/queuekit/semantics"
)

// publisher implements driver.Publisher.
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
	if !prepared(msgs, p.b.maxSize) { // package broker prepares them; a direct caller may not
		if err := driver.Prepare(op, msgs, p.b.maxSize); err != nil {
			return err
		}
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
	// message with headers; the small payloads (up to chunkedMax bytes) of
	// a call with several messages share one allocation, and those of
	// single messages share chunks (see copyPayload) or the allocation of
	// the entry of a message published alone to one group. A message with DeliverAt in the future gets its due time
	// (nanotime): DeliverAt less epoch, on the monotonic clock where
	// DeliverAt has a reading of it, so it is never held shorter than asked.
	var ents []entry
	var inline []byte // room for msgs[0]'s payload in its entry's allocation
	var shared []byte // room for the small payloads of several messages
	if n*G == 1 {
		ents, inline = entryWithRoom(len(msgs[0].Payload))
	} else {
		ents = make([]entry, n*G)
		if n > 1 {
			size := 0
			for _, m := range msgs {
				if len(m.Payload) <= chunkedMax {
					size += len(m.Payload)
				}
			}
			if size > 0 {
				shared = make([]byte, 0, size)
			}
		}
	}
	var now time.Time
	for i, m := range msgs {
		e := &ents[i]
		payload, headers := m.Payload, m.Headers
		switch {
		case len(payload) == 0:
		case inline != nil:
			payload = inline[:copy(inline, payload)]
		case len(payload) <= chunkedMax && shared != nil:
			// Capacity ends with the copy: a receiver's append cannot
			// touch the next one.
			start := len(shared)
			shared = append(shared, payload...)
			payload = shared[start:len(shared):len(shared)]
		default:
			payload = copyPayload(payload)
		}
		if headers != nil {
			headers = maps.Clone(headers)
		}
		e.init(m, payload, headers, targets[0])
		if e.key != "" {
			e.khash = keytab.Hash(e.key) // here, not under a group's lock
		}
		if !m.DeliverAt.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			if d := m.DeliverAt.Sub(now); d > 0 {
				e.due = int64(now.Sub(epoch) + d)
			}
		}
		for gi := 1; gi < G; gi++ {
			ents[gi*n+i].init(&e.first.msg, payload, headers, targets[gi])
			ents[gi*n+i].due, ents[gi*n+i].khash = e.due, e.khash
		}
	}

	if G == 1 { // fast path: room for everything in the only group
		g := targets[0]
		g.lock()
		if !g.closed && g.limitLocked()-g.count >= n {
			g.count += n
			g.insertLocked(ents)
			g.unlock()
			return nil
		}
		g.unlock()
	}

	var resBuf [4]int
	var res []int
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

// prepared reports whether msgs are ready to publish as driver.Prepare
// would leave them, without reading the clock.
func prepared(msgs []*broker.Message, maxSize int) bool {
	for _, m := range msgs {
		if m == nil || m.ID == "" || m.PublishedAt.IsZero() || maxSize > 0 && m.Size() > maxSize {
			return false
		}
	}
	return true
}

// entryWithRoom returns one entry allocated together with room for a
// payload of size bytes (whose capacity ends with it), when size fits one
// of the sizes below; else the room is nil. Either way the message costs
// one allocation of a size class that it fills.
func entryWithRoom(size int) ([]entry, []byte) {
	switch {
	case size == 0 || size > 256:
		return make([]entry, 1), nil
	case size <= 32:
		x := new(struct {
			e    [1]entry
			room [32]byte
		})
		return x.e[:], x.room[:size:size]
	case size <= 64:
		x := new(struct {
			e    [1]entry
			room [64]byte
		})
		return x.e[:], x.room[:size:size]
	case size <= 128:
		x := new(struct {
			e    [1]entry
			room [128]byte
		})
		return x.e[:], x.room[:size:size]
	default:
		x := new(struct {
			e    [1]entry
			room [256]byte
		})
		return x.e[:], x.room[:size:size]
	}
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

// subscriber implements driver.Subscriber and driver.BatchReceiver.
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
	_ driver.Subscriber    = (*subscriber)(nil)
	_ driver.BatchReceiver = (*subscriber)(nil)
)

// Receive waits for one delivery.
func (s *subscriber) Receive(ctx context.Context) (driver.Delivery, error) {
	var buf [1]driver.Delivery
	if _, err := s.g.receive(ctx, s, buf[:]); err != nil {
		return nil, err
	}
	return buf[0], nil
}

// ReceiveBatch waits for at least one delivery and returns up to len(buf).
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
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
