package memory

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Defaults of Options.
const (
	DefaultAckTimeout     = 30 * time.Second
	DefaultBuffer         = 65536
	DefaultPace           = 1024
	DefaultMaxMessageSize = 10 << 20
)

// Options configure a Broker made by New. The zero value is ready to use.
type Options struct {
	// AckTimeout is how long a delivery may stay unsettled before it is
	// redelivered, for subscribers that set no SubscriberOptions.AckTimeout.
	// Default DefaultAckTimeout.
	AckTimeout time.Duration
	// Buffer is how many messages one group holds (ready, in flight,
	// delayed or waiting for their key) before Publish waits for room.
	// Default DefaultBuffer.
	Buffer int
	// Pace is how many messages a group that has subscribers holds before
	// Publish waits for them to take it down — for at most 5 ms, after
	// which it goes on, up to Buffer (see "Backpressure" in the package
	// doc). 0 means DefaultPace; a negative value turns pacing off.
	Pace int
	// MaxMessageSize is the largest Message.Size that Publish accepts.
	// 0 means DefaultMaxMessageSize; a negative value means no limit.
	MaxMessageSize int
}

func (o Options) withDefaults() Options {
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.Buffer <= 0 {
		o.Buffer = DefaultBuffer
	}
	if o.Pace == 0 {
		o.Pace = DefaultPace
	}
	switch {
	case o.MaxMessageSize == 0:
		o.MaxMessageSize = DefaultMaxMessageSize
	case o.MaxMessageSize < 0:
		o.MaxMessageSize = 0 // broker.Prepare: no limit
	}
	return o
}

// Broker is a handle on an in-process broker. It implements driver.Broker
// and adds Stats and Depth. It is safe for concurrent use.
type Broker struct {
	c          *core
	name       string // registry name for handles made by Open
	registered bool
	ackTimeout time.Duration
	maxSize    int

	mu     sync.Mutex
	closed bool
	pubs   map[*publisher]struct{}
	subs   map[*subscriber]struct{}
}

var (
	_ driver.Broker       = (*Broker)(nil)
	_ driver.Declarer     = (*Broker)(nil)
	_ driver.GroupChecker = (*Broker)(nil)
)

// New returns a private in-process broker.
func New(opts Options) *Broker {
	opts = opts.withDefaults()
	c := newCore(opts)
	c.refs = 1
	return newHandle(c, opts)
}

func newHandle(c *core, opts Options) *Broker {
	return &Broker{
		c:          c,
		ackTimeout: opts.AckTimeout,
		maxSize:    opts.MaxMessageSize,
		pubs:       make(map[*publisher]struct{}),
		subs:       make(map[*subscriber]struct{}),
	}
}

// Capabilities claims everything the conformance suite checks.
func (b *Broker) Capabilities() semantics.Capabilities {
	return semantics.Capabilities{
		ConsumerGroups:    true,
		FanOut:            true,
		PerKeyOrdering:    true,
		CrashRedelivery:   true,
		DelayedNack:       true,
		AttemptCount:      true,
		DeadLetter:        true,
		NativeDeadLetter:  true,
		MaxMessageSize:    b.maxSize,
		ScheduledDelivery: true,
	}
}

// NewPublisher returns a publisher to any topic of the broker.
func (b *Broker) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	p := &publisher{b: b, done: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, broker.ErrClosed
	}
	b.pubs[p] = struct{}{}
	return p, nil
}

// NewSubscriber joins group opts.Group of opts.Topic, creating both if
// needed. The subscriber implements driver.BatchReceiver.
func (b *Broker) NewSubscriber(ctx context.Context, opts driver.SubscriberOptions) (driver.Subscriber, error) {
	if opts.AckTimeout == 0 {
		opts.AckTimeout = b.ackTimeout
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, broker.ErrClosed
	}
	t, err := b.c.topic(opts.Topic)
	if err != nil {
		return nil, err
	}
	s, err := t.subscribe(b, opts)
	if err != nil {
		return nil, err
	}
	b.subs[s] = struct{}{}
	return s, nil
}

// Declare creates topic and its groups. The first group of a topic adopts
// what reached the topic before any group existed (only dead letters can:
// Publish refuses a topic without a group).
func (b *Broker) Declare(ctx context.Context, topic string, groups []string) error {
	t, err := b.c.topic(topic)
	if err != nil {
		return err
	}
	for _, g := range groups {
		t.group(g)
	}
	return nil
}

// HasGroup reports whether a group was declared on topic.
func (b *Broker) HasGroup(ctx context.Context, topic string) (bool, error) {
	t, err := b.c.topic(topic)
	if err != nil {
		return false, err
	}
	return t.hasGroup(), nil
}

// Close closes the publishers and subscribers made by b (a waiting Publish
// or Receive returns broker.ErrClosed; unsettled deliveries become
// available for redelivery) and releases b's hold on the broker: the
// broker itself closes, dropping its messages, with its last handle.
// Closing twice returns nil.
func (b *Broker) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	pubs, subs := b.pubs, b.subs
	b.pubs, b.subs = nil, nil
	b.mu.Unlock()
	for p := range pubs {
		p.close()
	}
	for s := range subs {
		s.close()
	}
	release(b)
	return nil
}

func (b *Broker) forgetPublisher(p *publisher) {
	b.mu.Lock()
	delete(b.pubs, p)
	b.mu.Unlock()
}

func (b *Broker) forgetSubscriber(s *subscriber) {
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
}

// ---- the mem:// registry ----

var (
	registryMu sync.Mutex
	registry   = map[string]*core{}
)

func init() {
	driver.Register("mem", driver.OpenerFunc(openURL))
}

// Open opens mem://NAME?params; see the package documentation for the
// parameters. It is what broker.Open calls for the mem scheme.
func Open(ctx context.Context, rawURL string) (*Broker, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "mem" {
		return nil, broker.Errorf(semantics.InvalidArgument, "mem: open", "malformed mem:// URL %s", broker.Redact(rawURL))
	}
	return openParsed(u)
}

func openURL(ctx context.Context, u *url.URL) (driver.Broker, error) {
	b, err := openParsed(u)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func openParsed(u *url.URL) (*Broker, error) {
	const op = "mem: open"
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.User != nil {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "a mem:// URL is mem://NAME?params, got %s", u.Redacted())
	}
	p := driver.NewParams("mem", u, "ack_timeout", "buffer", "max_size", "pace")
	opts := Options{
		AckTimeout:     p.Duration("ack_timeout", DefaultAckTimeout),
		Buffer:         p.Int("buffer", DefaultBuffer),
		Pace:           p.Int("pace", DefaultPace),
		MaxMessageSize: p.Int("max_size", DefaultMaxMessageSize),
	}
	if opts.AckTimeout <= 0 {
		p.Fail("parameter ack_timeout=%v must be positive", opts.AckTimeout)
	}
	if opts.Buffer <= 0 {
		p.Fail("parameter buffer=%d must be positive", opts.Buffer)
	}
	if opts.Pace == 0 || opts.Pace < -1 {
		p.Fail("parameter pace=%d must be positive, or -1 for no pacing", opts.Pace)
	}
	if opts.MaxMessageSize == 0 || opts.MaxMessageSize < -1 {
		p.Fail("parameter max_size=%d must be positive, or -1 for no limit", opts.MaxMessageSize)
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	name := u.Host
	q := u.Query()

	registryMu.Lock()
	defer registryMu.Unlock()
	c := registry[name]
	if c == nil {
		c = newCore(opts)
		registry[name] = c
	} else {
		for _, s := range []struct {
			param     string
			had, want int
		}{{"buffer", c.buffer, opts.Buffer}, {"pace", c.pace, opts.Pace}} {
			if q.Get(s.param) != "" && s.had != s.want {
				return nil, broker.Errorf(semantics.InvalidArgument, op,
					"mem://%s is already open with %s=%d; every Open of one name shares one broker, so its %s cannot change to %d", name, s.param, s.had, s.param, s.want)
			}
		}
	}
	c.refs++
	b := newHandle(c, opts)
	b.name, b.registered = name, true
	return b, nil
}

// release drops b's reference on its core and closes the core with the last.
func release(b *Broker) {
	registryMu.Lock()
	b.c.refs--
	last := b.c.refs == 0
	if last && b.registered && registry[b.name] == b.c {
		delete(registry, b.name)
	}
	registryMu.Unlock()
	if last {
		b.c.close()
	}
}

// String names the broker: "mem://NAME" when opened by URL.
func (b *Broker) String() string {
	if b.registered {
		return fmt.Sprintf("mem://%s", b.name)
	}
	return "mem (private)"
}
