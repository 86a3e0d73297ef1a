package memory

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// core is one in-process broker, shared by the handles (*Broker) on it.
type core struct {
	buffer int // Options.Buffer
	pace   int // Options.Pace, after defaults (negative: no pacing)
	refs   int // guarded by registryMu

	mu     sync.RWMutex
	topics map[string]*topic
	closed bool
}

func newCore(opts Options) *core {
	return &core{buffer: opts.Buffer, pace: opts.Pace, topics: make(map[string]*topic)}
}

// topic returns the topic called name, creating it.
func (c *core) topic(name string) (*topic, error) {
	c.mu.RLock()
	t, closed := c.topics[name], c.closed
	c.mu.RUnlock()
	if closed {
		return nil, broker.ErrClosed
	}
	if t != nil {
		return t, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, broker.ErrClosed
	}
	if t = c.topics[name]; t == nil {
		t = &topic{name: name, c: c, byName: make(map[string]*group)}
		t.orphan = newGroup(t, "", c)
		t.targets.Store(&[]*group{t.orphan})
		c.topics[name] = t
	}
	return t, nil
}

func (c *core) close() {
	c.mu.Lock()
	c.closed = true
	topics := c.topics
	c.topics = nil
	c.mu.Unlock()
	for _, t := range topics {
		for _, g := range *t.targets.Load() {
			g.close()
		}
	}
}

// deadLetter publishes dead letters into topic, without waiting for room.
func (c *core) deadLetter(name string, msgs []*broker.Message) {
	t, err := c.topic(name)
	if err != nil {
		return // closed: the messages go with the broker
	}
	for _, g := range *t.targets.Load() {
		ents := make([]entry, len(msgs))
		for i, m := range msgs {
			ents[i].init(m, m.Payload, m.Headers, g)
		}
		g.lock()
		if !g.closed {
			g.count += len(ents)
			for i := range ents {
				g.ready.pushBack(&ents[i])
			}
			g.published += uint64(len(ents))
			g.wakeReceiverLocked()
		}
		g.unlock()
	}
}

// topic holds the groups subscribed to it.
type topic struct {
	name string
	c    *core
	// targets are the groups Publish delivers to: the orphan group until
	// a group is created, then the groups. Copy on write, under mu.
	targets atomic.Pointer[[]*group]

	mu     sync.Mutex
	byName map[string]*group
	orphan *group // holds messages until the first group adopts them
}

// group returns the group called name, creating it: the first group adopts
// what was published to the topic before it (dead letters), the others start
// empty.
func (t *topic) group(name string) *group {
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.byName[name]
	if g == nil {
		if t.orphan != nil {
			g, t.orphan = t.orphan, nil
			g.lock()
			g.name = name
			g.unlock()
		} else {
			old := *t.targets.Load()
			gs := make([]*group, len(old), len(old)+1)
			copy(gs, old)
			g = newGroup(t, name, t.c)
			gs = append(gs, g)
			t.targets.Store(&gs)
		}
		t.byName[name] = g
	}
	return g
}

// hasGroup reports whether a group was declared on t.
func (t *topic) hasGroup() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byName) > 0
}

func (t *topic) subscribe(b *Broker, opts driver.SubscriberOptions) (*subscriber, error) {
	g := t.group(opts.Group)

	s := &subscriber{
		b:           b,
		g:           g,
		topic:       opts.Topic,
		ackTimeout:  int64(opts.AckTimeout),
		maxAttempts: opts.MaxAttempts,
		dlq:         opts.DeadLetterTopic,
		prefetch:    opts.Prefetch,
		credit:      make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	g.lock()
	defer g.unlock()
	if g.closed {
		return nil, broker.ErrClosed
	}
	g.subs = append(g.subs, s)
	return s, nil
}

var epoch = time.Now()

// nanotime is monotonic nanoseconds since the package started.
func nanotime() int64 { return int64(time.Since(epoch)) }

// ErrExpired is returned by Ack on a delivery that is no longer in flight:
// its ack timeout passed or its subscriber was closed, so the message was
// (or will be) delivered again. The Ack does nothing.
var ErrExpired = &broker.Error{Kind: semantics.Permanent, Op: "mem: ack", Err: errExpired{}}

type errExpired struct{}

func (errExpired) Error() string {
	return "delivery expired (its ack timeout passed or its subscriber closed); the message is redelivered"
}
