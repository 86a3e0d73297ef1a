package pubsub

import (
	"context"
	"strings"
	"sync"
	"time"

	ps "cloud.google.com/go/pubsub/v2"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// headerKey carries Message.Key when it is not the ordering key
// (DisableOrdering).
const headerKey = driver.HeaderPrefix + "key"

// NewPublisher returns a publisher that sends to any topic through the
// client's batching publisher, one per topic. It creates no topic: package
// broker refuses a Publish to a topic without a subscription (HasGroup).
func (b *Broker) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	return &publisher{b: b, topics: map[string]*ps.Publisher{}}, nil
}

type publisher struct {
	b *Broker

	mu     sync.RWMutex // held for reading while handing messages to the SDK
	closed bool
	topics map[string]*ps.Publisher
}

// Publish converts msgs (ID and publish time become attributes, the key the
// ordering key) and checks the topic's name and every message against
// Pub/Sub's limits before any request; then it hands them all to the
// batching publisher and waits for every result. Messages that failed are
// listed in a *driver.PublishError; an ordering key whose publish failed is
// resumed afterwards, so that publishing it again works (the messages after
// the failed one, in this call, failed too and were not sent: order is
// kept). A topic that does not exist fails every message with NotFound.
func (p *publisher) Publish(ctx context.Context, topic string, msgs ...*driver.Message) error {
	const op = "gcppubsub: publish"
	if err := checkID(op, "topic", topic, "topics"); err != nil {
		return err
	}
	ordering := !p.b.opts.DisableOrdering
	out := make([]ps.Message, len(msgs))
	for i, m := range msgs {
		if err := toPubSub(op, m, ordering, &out[i]); err != nil {
			return err
		}
	}
	t, err := p.topic(topic)
	if err != nil {
		return err
	}

	var one [1]*ps.PublishResult
	results := one[:]
	if len(msgs) > 1 {
		results = make([]*ps.PublishResult, len(msgs))
	}
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return driver.ErrClosed
	}
	for i := range out {
		results[i] = t.Publish(ctx, &out[i])
	}
	p.mu.RUnlock()

	var failed []driver.PublishFailure
	for i, r := range results[:len(msgs)] {
		if _, err := r.Get(ctx); err != nil {
			failed = append(failed, driver.PublishFailure{Index: i, ID: msgs[i].ID, Err: wrap(op, err)})
		}
	}
	if len(failed) == 0 {
		return nil
	}
	if ordering {
		for _, f := range failed {
			if k := out[f.Index].OrderingKey; k != "" {
				t.ResumePublish(k)
			}
		}
	}
	return &driver.Error{Kind: driver.KindOf(failed[0].Err), Op: op, Err: &driver.PublishError{Failed: failed}}
}

// topic returns the SDK publisher of topic.
func (p *publisher) topic(topic string) (*ps.Publisher, error) {
	p.mu.RLock()
	t, closed := p.topics[topic], p.closed
	p.mu.RUnlock()
	if closed {
		return nil, driver.ErrClosed
	}
	if t != nil {
		return t, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, driver.ErrClosed
	}
	if t = p.topics[topic]; t == nil {
		t = p.b.client.Publisher(p.b.topicName(topic))
		t.EnableMessageOrdering = !p.b.opts.DisableOrdering
		s := ps.DefaultPublishSettings
		if o := p.b.opts; o.BatchDelay > 0 {
			s.DelayThreshold = o.BatchDelay
		}
		if o := p.b.opts; o.BatchCount > 0 {
			s.CountThreshold = o.BatchCount
		}
		if o := p.b.opts; o.BatchBytes > 0 {
			s.ByteThreshold = o.BatchBytes
		}
		t.PublishSettings = s
		p.topics[topic] = t
	}
	return t, nil
}

// Close flushes and stops every topic's publisher, waiting no longer than
// ctx. Publish after Close returns ErrClosed.
func (p *publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	topics := p.topics
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, t := range topics {
			wg.Add(1)
			go func() { defer wg.Done(); t.Stop() }()
		}
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return driver.Errorf(semantics.Canceled, "gcppubsub: close publisher", "messages still in flight: %w", ctx.Err())
	}
}

// toPubSub fills out from m, or returns an InvalidArgument error when m
// breaks one of Pub/Sub's limits on attributes and ordering keys.
func toPubSub(op string, m *driver.Message, ordering bool, out *ps.Message) error {
	attrs := make(map[string]string, len(m.Headers)+3)
	for k, v := range m.Headers {
		switch {
		case k == "":
			return driver.Errorf(semantics.InvalidArgument, op, "message %s has a header with an empty name", m.ID)
		case strings.HasPrefix(k, "goog"):
			return driver.Errorf(semantics.InvalidArgument, op, "message %s: header %q starts with \"goog\", which Pub/Sub reserves", m.ID, k)
		case len(k) > maxAttrKeyBytes:
			return driver.Errorf(semantics.InvalidArgument, op, "message %s: header name %.32q... is %d bytes; Pub/Sub accepts %d", m.ID, k, len(k), maxAttrKeyBytes)
		case len(v) > maxAttrValueBytes:
			return driver.Errorf(semantics.InvalidArgument, op, "message %s: header %q value is %d bytes; Pub/Sub accepts %d", m.ID, k, len(v), maxAttrValueBytes)
		}
		attrs[k] = v
	}
	if len(m.ID) > maxAttrValueBytes {
		return driver.Errorf(semantics.InvalidArgument, op, "message ID %.32q... is %d bytes; Pub/Sub attributes accept %d", m.ID, len(m.ID), maxAttrValueBytes)
	}
	if len(m.Key) > maxOrderingKey {
		return driver.Errorf(semantics.InvalidArgument, op, "message %s: key is %d bytes; Pub/Sub accepts %d", m.ID, len(m.Key), maxOrderingKey)
	}
	attrs[driver.HeaderID] = m.ID
	attrs[driver.HeaderPublishedAt] = m.PublishedAt.UTC().Format(time.RFC3339Nano)
	out.OrderingKey = ""
	if m.Key != "" {
		if ordering {
			out.OrderingKey = m.Key
		} else {
			attrs[headerKey] = m.Key
		}
	}
	if len(attrs) > maxAttributes {
		return driver.Errorf(semantics.InvalidArgument, op, "message %s has %d headers; Pub/Sub accepts %d attributes, %d with queuekit's own",
			m.ID, len(m.Headers), maxAttributes, len(attrs)-len(m.Headers))
	}
	out.Data = m.Payload
	out.Attributes = attrs
	return nil
}
