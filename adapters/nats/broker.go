package nats

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Scheme is the URL scheme the adapter registers.
const Scheme = "nats"

// Defaults of Options.
const (
	DefaultAckWait       = 30 * time.Second
	DefaultMaxAckPending = 2000
	DefaultPrefetch      = 1000
	// AtMostOncePrefetch caps the default prefetch of at-most-once
	// subscribers (see the package doc).
	AtMostOncePrefetch    = 16
	DefaultPublishWindow  = 4096
	DefaultPublishTimeout = 30 * time.Second
	// HeaderReserve is what MaxMessageSize keeps of the server's
	// max_payload for the header block (ID, key, framing).
	HeaderReserve = 1024
)

// Retention policies of the streams the adapter creates (Options.Retention).
const (
	// Limits keeps messages until the stream's limits (MaxAge) drop them,
	// whoever acked them: a group declared later also receives the
	// messages still kept. JetStream's default.
	Limits = "limits"
	// Interest keeps a message until every group that existed when it was
	// published acked it.
	Interest = "interest"
)

// Options configure a Broker. The zero value is ready to use; Open reads
// them from the URL.
type Options struct {
	// AckWait is the ack wait of groups whose subscribers set no
	// SubscriberOptions.AckTimeout: how long a delivery may stay unsettled
	// before JetStream redelivers it. Default DefaultAckWait.
	AckWait time.Duration
	// MaxAckPending bounds the unsettled deliveries of a group (all its
	// subscribers together) that the adapter creates unordered. Default
	// DefaultMaxAckPending. A group subscribed with per-key order has 1.
	MaxAckPending int
	// Prefetch is how many messages a subscriber asks for per pull when
	// SubscriberOptions.Prefetch is 0. Default DefaultPrefetch.
	Prefetch int
	// PublishWindow bounds the messages a publisher has sent and not yet
	// seen acknowledged by JetStream. Default DefaultPublishWindow.
	PublishWindow int
	// PublishTimeout is how long a Publish call waits (for room in the
	// window and for JetStream's acks) before the messages without an ack
	// fail (Transient). Default DefaultPublishTimeout.
	PublishTimeout time.Duration
	// Storage of the streams the adapter creates: jetstream.FileStorage
	// (the default) or jetstream.MemoryStorage.
	Storage jetstream.StorageType
	// Replicas of the streams the adapter creates, 1 to 5. Default 1.
	Replicas int
	// Retention of the streams the adapter creates for topics: Limits (the
	// default) or Interest. Dead-letter topics always use Limits, so that
	// dead letters wait for whoever reads them.
	Retention string
	// MaxAge drops messages older than this from the streams the adapter
	// creates; 0 keeps them until Retention lets them go.
	MaxAge time.Duration
	// Domain is the JetStream domain to use, "" for the account's own.
	Domain string
}

func (o Options) withDefaults() (Options, error) {
	const op = "nats: options"
	if o.AckWait == 0 {
		o.AckWait = DefaultAckWait
	}
	if o.MaxAckPending == 0 {
		o.MaxAckPending = DefaultMaxAckPending
	}
	if o.Prefetch == 0 {
		o.Prefetch = DefaultPrefetch
	}
	if o.PublishWindow == 0 {
		o.PublishWindow = DefaultPublishWindow
	}
	if o.PublishTimeout == 0 {
		o.PublishTimeout = DefaultPublishTimeout
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Retention == "" {
		o.Retention = Limits
	}
	switch {
	case o.AckWait < time.Millisecond || o.AckWait > maxAckWait:
		return o, driver.Errorf(semantics.InvalidArgument, op, "AckWait %v is out of range [1ms, %v]", o.AckWait, maxAckWait)
	case o.MaxAckPending < 1 || o.MaxAckPending > maxAckPendingLimit:
		return o, driver.Errorf(semantics.InvalidArgument, op, "MaxAckPending %d is out of range [1, %d]", o.MaxAckPending, maxAckPendingLimit)
	case o.Prefetch < 1 || o.Prefetch > maxPrefetch:
		return o, driver.Errorf(semantics.InvalidArgument, op, "Prefetch %d is out of range [1, %d]", o.Prefetch, maxPrefetch)
	case o.PublishWindow < 1 || o.PublishWindow > maxPublishWindow:
		return o, driver.Errorf(semantics.InvalidArgument, op, "PublishWindow %d is out of range [1, %d]", o.PublishWindow, maxPublishWindow)
	case o.PublishTimeout < time.Millisecond || o.PublishTimeout > time.Hour:
		return o, driver.Errorf(semantics.InvalidArgument, op, "PublishTimeout %v is out of range [1ms, 1h]", o.PublishTimeout)
	case o.Storage != jetstream.FileStorage && o.Storage != jetstream.MemoryStorage:
		return o, driver.Errorf(semantics.InvalidArgument, op, "Storage %v is neither file nor memory", o.Storage)
	case o.Replicas < 1 || o.Replicas > 5:
		return o, driver.Errorf(semantics.InvalidArgument, op, "Replicas %d is out of range [1, 5] (JetStream's limit)", o.Replicas)
	case o.Retention != Limits && o.Retention != Interest:
		return o, driver.Errorf(semantics.InvalidArgument, op, "Retention %q is neither %q nor %q", o.Retention, Limits, Interest)
	case o.MaxAge != 0 && (o.MaxAge < minMaxAge || o.MaxAge < 0):
		return o, driver.Errorf(semantics.InvalidArgument, op, "MaxAge %v must be 0 (no limit) or at least %v", o.MaxAge, minMaxAge)
	}
	return o, nil
}

// Ranges of the options.
const (
	maxAckWait         = 24 * time.Hour
	maxAckPendingLimit = 1 << 20
	maxPrefetch        = 1 << 16
	maxPublishWindow   = 1 << 16
	minMaxAge          = 100 * time.Millisecond
)

// Broker is a connection to a NATS server with JetStream. It implements
// driver.Broker, driver.Declarer, driver.GroupChecker and
// driver.BacklogReporter; wrap it with broker.New. It is safe for
// concurrent use.
type Broker struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	own     bool // Close closes nc: Open dialled it
	opts    Options
	maxSize int

	streams sync.Map // topic -> stream name, once resolved

	mu     sync.Mutex
	closed bool
}

var (
	_ driver.Broker          = (*Broker)(nil)
	_ driver.Declarer        = (*Broker)(nil)
	_ driver.GroupChecker    = (*Broker)(nil)
	_ driver.BacklogReporter = (*Broker)(nil)
	_ driver.As              = (*Broker)(nil)
)

// New returns a Broker over nc, a connection the caller made (with the
// credentials, TLS and reconnect policy it wants) and keeps: Close leaves
// it open. Use it as broker.New(b).
func New(nc *nats.Conn, opts Options) (*Broker, error) {
	const op = "nats: new"
	if nc == nil {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "nil *nats.Conn")
	}
	if nc.IsClosed() {
		return nil, driver.Errorf(semantics.Closed, op, "the *nats.Conn is closed")
	}
	return newBroker(nc, opts, false)
}

func newBroker(nc *nats.Conn, opts Options, own bool) (*Broker, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	js, err := newJetStream(nc, opts)
	if err != nil {
		return nil, wrap("nats: jetstream", err)
	}
	maxSize := int(nc.MaxPayload()) - HeaderReserve
	if maxSize <= 0 {
		maxSize = int(nc.MaxPayload())
	}
	return &Broker{nc: nc, js: js, own: own, opts: opts, maxSize: maxSize}, nil
}

// newJetStream returns a JetStream context on nc with more options.
func newJetStream(nc *nats.Conn, opts Options, more ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	jo := more
	if opts.Domain != "" {
		return jetstream.NewWithDomain(nc, opts.Domain, jo...)
	}
	return jetstream.New(nc, jo...)
}

// Capabilities: consumer groups (durable consumers), fan-out (a consumer
// per group), per-key order (one unsettled delivery per group), crash
// redelivery (ack wait), delayed nack (NakWithDelay), attempt count (the
// delivery count) and dead-lettering done by the adapter; the largest
// message is the server's max_payload less HeaderReserve.
func (b *Broker) Capabilities() semantics.Capabilities {
	return semantics.Capabilities{
		ConsumerGroups:  true,
		FanOut:          true,
		PerKeyOrdering:  true,
		CrashRedelivery: true,
		DelayedNack:     true,
		AttemptCount:    true,
		DeadLetter:      true,
		MaxMessageSize:  b.maxSize,
	}
}

// As sets target, a **nats.Conn or a *jetstream.JetStream, to the
// connection or JetStream context underneath.
func (b *Broker) As(target any) bool {
	switch t := target.(type) {
	case **nats.Conn:
		*t = b.nc
	case *jetstream.JetStream:
		*t = b.js
	default:
		return false
	}
	return true
}

// Conn returns the connection underneath.
func (b *Broker) Conn() *nats.Conn { return b.nc }

// JetStream returns the JetStream context underneath.
func (b *Broker) JetStream() jetstream.JetStream { return b.js }

// Close flushes what was sent on the connection (acks, naks) and, when
// Open dialled it, closes it. Package broker closes the publishers and
// subscribers first. Closing twice returns nil.
func (b *Broker) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	err := flush(ctx, b.nc)
	if b.own {
		b.nc.Close()
	}
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return wrap("nats: close", err)
	}
	return nil
}

// flush waits (within ctx, and at most 5s) until the server has
// processed what was sent on nc.
func flush(ctx context.Context, nc *nats.Conn) error {
	if nc.IsClosed() {
		return nil
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return nc.FlushWithContext(fctx)
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}
