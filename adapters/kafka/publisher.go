package kafka

import (
	"context"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

var headerIDKey = []byte(broker.HeaderID)

// Publisher publishes with the Broker's client: acks from all in-sync
// replicas, the idempotent producer, keys partitioned with murmur2 like the
// Java client. It implements broker.Publisher.
type Publisher struct {
	b        *Broker
	inflight sync.WaitGroup
	mu       sync.RWMutex // held shared by Publish, exclusively by Close
	closed   bool
}

var _ broker.Publisher = (*Publisher)(nil)

// NewPublisher returns a publisher over the Broker's client.
func (b *Broker) NewPublisher(ctx context.Context) (broker.Publisher, error) {
	if b.closed.Load() {
		return nil, broker.ErrClosed
	}
	return &Publisher{b: b}, nil
}

// Publish sends msgs to topic as one pipelined batch and returns once Kafka
// has acknowledged every one (acks=all). Each message's ID travels in the
// queuekit-id header and its PublishedAt as the record timestamp; a nil
// Payload is a tombstone. When some messages fail the error is a
// *broker.PublishError naming them. If ctx ends first, the messages not yet
// acknowledged are reported failed with a Transient error: they may still
// be written.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	const op = "kafka: publish"
	if topic == "" {
		return errf(semantics.InvalidArgument, op, "topic is required")
	}
	if err := broker.Prepare(op, msgs, p.b.opts.MaxMessageBytes); err != nil {
		return err
	}
	p.mu.RLock()
	if p.closed || p.b.closed.Load() {
		p.mu.RUnlock()
		return broker.ErrClosed
	}
	p.inflight.Add(1)
	p.mu.RUnlock()
	defer p.inflight.Done()
	if len(msgs) == 0 {
		return nil
	}
	if err := p.b.EnsureTopic(ctx, topic); err != nil {
		return wrap(op, err)
	}
	return produce(ctx, p.b.cl, topic, msgs)
}

// produce sends msgs as records of topic on cl and waits for every promise
// (or ctx).
func produce(ctx context.Context, cl *kgo.Client, topic string, msgs []*broker.Message) error {
	const op = "kafka: publish"
	recs := toRecords(topic, msgs)
	w := newWaiter(recs)
	for i := range recs {
		cl.Produce(ctx, &recs[i], w.promise)
	}
	select {
	case <-w.done:
	case <-ctx.Done():
	}
	if w.failures.Load() == 0 && w.left.Load() == 0 {
		return nil
	}
	pe := &broker.PublishError{}
	for i := range recs {
		switch w.state[i].Load() {
		case recFailed:
			pe.Failed = append(pe.Failed, broker.PublishFailure{Index: i, ID: msgs[i].ID, Err: wrap("", w.errs[i])})
		case recPending:
			pe.Failed = append(pe.Failed, broker.PublishFailure{Index: i, ID: msgs[i].ID,
				Err: errf(semantics.Transient, "", "no acknowledgement before the context ended (%v); the message may still be written", ctx.Err())})
		}
	}
	if len(pe.Failed) == 0 {
		return nil
	}
	return &broker.Error{Kind: broker.KindOf(pe.Failed[0].Err), Op: op, Err: pe}
}

// toRecords converts msgs into records sharing a few arena allocations. An
// empty topic sends each message to its own Topic.
func toRecords(topic string, msgs []*broker.Message) []kgo.Record {
	nh, nb := 0, 0
	for _, m := range msgs {
		nh += 1 + len(m.Headers)
		nb += len(m.ID) + len(m.Key)
	}
	recs := make([]kgo.Record, len(msgs))
	hdrs := make([]kgo.RecordHeader, 0, nh)
	arena := make([]byte, 0, nb)
	for i, m := range msgs {
		r := &recs[i]
		r.Topic = topic
		if topic == "" {
			r.Topic = m.Topic
		}
		r.Value = m.Payload
		r.Timestamp = m.PublishedAt
		if m.Key != "" {
			start := len(arena)
			arena = append(arena, m.Key...)
			r.Key = arena[start:len(arena):len(arena)]
		}
		hs := len(hdrs)
		start := len(arena)
		arena = append(arena, m.ID...)
		hdrs = append(hdrs, kgo.RecordHeader{Key: broker.HeaderID, Value: arena[start:len(arena):len(arena)]})
		for k, v := range m.Headers {
			hdrs = append(hdrs, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
		r.Headers = hdrs[hs:len(hdrs):len(hdrs)]
	}
	return recs
}

// Record states in a waiter.
const (
	recPending uint32 = iota
	recOK
	recFailed
)

// waiter collects the promises of one produce call. A record's index is
// found from its address in the contiguous slice (the Go heap does not move
// objects), so promises need no lock and no per-record allocation.
type waiter struct {
	base     uintptr
	left     atomic.Int64
	failures atomic.Int64
	state    []atomic.Uint32
	errs     []error // errs[i] is written before state[i] becomes recFailed
	done     chan struct{}
}

var recSize = unsafe.Sizeof(kgo.Record{})

func newWaiter(recs []kgo.Record) *waiter {
	w := &waiter{
		base:  uintptr(unsafe.Pointer(&recs[0])),
		state: make([]atomic.Uint32, len(recs)),
		done:  make(chan struct{}),
	}
	w.left.Store(int64(len(recs)))
	return w
}

func (w *waiter) promise(r *kgo.Record, err error) {
	i := (uintptr(unsafe.Pointer(r)) - w.base) / recSize
	if err != nil {
		if w.errs == nil {
			w.errs = make([]error, len(w.state)) // promises run serially
		}
		w.errs[i] = err
		w.failures.Add(1)
		w.state[i].Store(recFailed)
	} else {
		w.state[i].Store(recOK)
	}
	if w.left.Add(-1) == 0 {
		close(w.done)
	}
}

// Close waits for the Publish calls in progress, no longer than ctx, and
// makes later calls return broker.ErrClosed. Publish returns only once Kafka
// has acknowledged its messages, so nothing is left buffered.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errf(semantics.Transient, "kafka: close publisher", "publishes still in flight: %v", ctx.Err())
	}
}
