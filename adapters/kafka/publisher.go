package kafka

import (
	"context"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Publisher publishes with the Broker's client: acks from all in-sync
// replicas, the idempotent producer, keys partitioned with murmur2 like the
// Java client, keyless messages spread round robin. It is the adapter's
// driver.Publisher; package broker prepares the messages (IDs, size limit,
// reserved headers) and checks that the topic has a group before Publish.
type Publisher struct {
	b      *Broker
	closed chan struct{} // closed by Close: a Publish still waiting gives up
	once   sync.Once
}

var _ driver.Publisher = (*Publisher)(nil)

// NewPublisher returns a publisher over the Broker's client.
func (b *Broker) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	if b.closed.Load() {
		return nil, driver.ErrClosed
	}
	return &Publisher{b: b, closed: make(chan struct{})}, nil
}

// As sets a **kgo.Client target to the client the publisher produces with.
func (p *Publisher) As(target any) bool { return p.b.As(target) }

// Publish sends msgs to topic as one pipelined batch and returns once Kafka
// has acknowledged every one (acks=all). Each message's ID travels in the
// queuekit-id header and its PublishedAt as the record timestamp; a nil
// Payload is a tombstone. When some messages fail the error is a
// *driver.PublishError naming them. If ctx ends (or the publisher is
// closed) first, the messages not yet acknowledged are reported failed:
// they may still be written.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*driver.Message) error {
	const op = "kafka: publish"
	if err := checkTopic(op, topic); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := p.b.EnsureTopic(ctx, topic); err != nil {
		return wrap(op, err)
	}
	return produce(ctx, p.closed, p.b.cl, topic, msgs)
}

// produce sends msgs as records of topic on cl and waits for every promise
// (or ctx, or closed).
func produce(ctx context.Context, closed <-chan struct{}, cl *kgo.Client, topic string, msgs []*driver.Message) error {
	const op = "kafka: publish"
	recs := toRecords(topic, msgs)
	w := newWaiter(recs)
	for i := range recs {
		cl.Produce(ctx, &recs[i], w.promise)
	}
	var stopped error
	select {
	case <-w.done:
	case <-ctx.Done():
		stopped = errf(semantics.Transient, "", "no acknowledgement before the context ended (%v); the message may still be written", ctx.Err())
	case <-closed:
		stopped = errf(semantics.Closed, "", "no acknowledgement before the publisher was closed; the message may still be written")
	}
	if w.failures.Load() == 0 && w.left.Load() == 0 {
		return nil
	}
	pe := &driver.PublishError{}
	for i := range recs {
		switch w.state[i].Load() {
		case recFailed:
			pe.Failed = append(pe.Failed, driver.PublishFailure{Index: i, ID: msgs[i].ID, Err: wrap("", w.errs[i])})
		case recPending:
			pe.Failed = append(pe.Failed, driver.PublishFailure{Index: i, ID: msgs[i].ID, Err: stopped})
		}
	}
	if len(pe.Failed) == 0 {
		return nil
	}
	return &driver.Error{Kind: driver.KindOf(pe.Failed[0].Err), Op: op, Err: pe}
}

// toRecords converts msgs into records sharing a few arena allocations. An
// empty topic sends each message to its own Topic.
func toRecords(topic string, msgs []*driver.Message) []kgo.Record {
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
		hdrs = append(hdrs, kgo.RecordHeader{Key: driver.HeaderID, Value: arena[start:len(arena):len(arena)]})
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

// Close makes a Publish still waiting for acknowledgements return, its
// unacknowledged messages reported failed (package broker calls it once the
// Publish calls under way finished, or when its ctx ends first). Publish
// returns only once Kafka acknowledged its messages, so nothing is left
// buffered.
func (p *Publisher) Close(ctx context.Context) error {
	p.once.Do(func() { close(p.closed) })
	return nil
}
