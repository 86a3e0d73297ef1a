package rabbitmq

import (
	"context"
	"log/slog"
	"net/url"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Queue types for Options.QueueType.
const (
	// Quorum queues are replicated and durable; they count deliveries
	// (x-delivery-count) and dead-letter after x-delivery-limit, which gives
	// Message.Attempt and native dead-lettering. The default.
	Quorum = "quorum"
	// Classic queues are lighter but count no deliveries: with them
	// Message.Attempt is 0 and MaxAttempts is not honoured.
	Classic = "classic"
)

// Defaults of Options.
const (
	// DefaultExchange is the exchange publishers send to.
	DefaultExchange = "queuekit"
	// DefaultExchangeType routes a message to the groups of exactly its
	// topic.
	DefaultExchangeType = "direct"
	// DefaultPrefetch is the subscribers' prefetch.
	DefaultPrefetch = 128
	// DefaultConfirmWindow is how many publishes a publisher keeps
	// unconfirmed at most.
	DefaultConfirmWindow = 512
	// DefaultMaxMessageSize is RabbitMQ's own default max_message_size.
	DefaultMaxMessageSize = 128 << 20
)

// Options configure a Broker. The zero value is usable: it declares a
// durable direct exchange "queuekit" and quorum queues.
type Options struct {
	// Exchange publishers send to, with the topic as routing key; default
	// "queuekit".
	Exchange string
	// ExchangeType is "direct" (default: a group receives exactly its
	// topic) or "topic" (a group's topic may hold the wildcards * and #).
	ExchangeType string
	// QueueType of the group queues: Quorum (default) or Classic.
	QueueType string
	// Prefetch is the subscribers' default prefetch (basic.qos), used when
	// SubscriberOptions.Prefetch is 0; default 128.
	Prefetch int
	// ConfirmWindow bounds the publishes a publisher has sent but the broker
	// has not confirmed yet; default 512.
	ConfirmWindow int
	// Passive verifies that the exchange (and for subscribers the queue)
	// exists instead of declaring it, for deployments whose topology is
	// managed elsewhere. A missing one is a NotFound error.
	Passive bool
	// AllowUnroutable publishes without the mandatory flag: a message no
	// queue is bound for is then dropped by the broker instead of being
	// reported as a NotFound error.
	AllowUnroutable bool
	// MaxMessageSize is the largest message (payload, key, ID and headers)
	// Publish accepts; default 128 MiB, RabbitMQ's own default limit.
	MaxMessageSize int
	// Redial makes a new connection when the one given to New is lost;
	// without it a lost connection makes every later call fail with a
	// Closed error. Brokers made by Dial or broker.Open redial their URL
	// and ignore it.
	Redial func(ctx context.Context) (*amqp.Connection, error)
	// ReconnectMaxWait caps the exponential backoff between reconnection
	// attempts; default 5s.
	ReconnectMaxWait time.Duration
	// QueueName names the queue of a group; default topic + "." + group.
	QueueName func(topic, group string) string
	// ConnectionName names the connections in RabbitMQ's management UI
	// and rabbitmqctl list_connections, followed by " publish" or
	// " consume"; default "queuekit".
	ConnectionName string
	// Logger receives connection loss and recovery events; default
	// slog.Default().
	Logger *slog.Logger
	// OnDeclare, when set, is called with the name of every queue the
	// broker declares: group, dead-letter and delay queues. Tests use it
	// to delete what they made (see testenv.DeleteRabbitMQ).
	OnDeclare func(queue string)
}

func (o Options) withDefaults() (Options, error) {
	const op = "rabbitmq: options"
	if o.Exchange == "" {
		o.Exchange = DefaultExchange
	}
	if o.ExchangeType == "" {
		o.ExchangeType = DefaultExchangeType
	}
	if o.QueueType == "" {
		o.QueueType = Quorum
	}
	if o.Prefetch == 0 {
		o.Prefetch = DefaultPrefetch
	}
	if o.ConfirmWindow == 0 {
		o.ConfirmWindow = DefaultConfirmWindow
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.ReconnectMaxWait == 0 {
		o.ReconnectMaxWait = 5 * time.Second
	}
	if o.QueueName == nil {
		o.QueueName = func(topic, group string) string { return topic + "." + group }
	}
	if o.ConnectionName == "" {
		o.ConnectionName = "queuekit"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.ExchangeType != "direct" && o.ExchangeType != "topic":
		return o, broker.Errorf(semantics.InvalidArgument, op, "exchange type %q is not direct or topic", o.ExchangeType)
	case o.QueueType != Quorum && o.QueueType != Classic:
		return o, broker.Errorf(semantics.InvalidArgument, op, "queue type %q is not quorum or classic", o.QueueType)
	case o.Prefetch < 0 || o.Prefetch > 65535:
		return o, broker.Errorf(semantics.InvalidArgument, op, "prefetch %d is not within 1..65535", o.Prefetch)
	case o.ConfirmWindow < 0:
		return o, broker.Errorf(semantics.InvalidArgument, op, "confirm window %d must be positive", o.ConfirmWindow)
	case o.MaxMessageSize < 0:
		return o, broker.Errorf(semantics.InvalidArgument, op, "max message size %d must be positive", o.MaxMessageSize)
	case o.ReconnectMaxWait < 0:
		return o, broker.Errorf(semantics.InvalidArgument, op, "reconnect max wait %v must be positive", o.ReconnectMaxWait)
	}
	return o, nil
}

// Broker is a RabbitMQ broker.Broker. It keeps one connection for
// publishing and one for consuming (a single one when made by New), and
// reconnects them when they drop.
type Broker struct {
	opts     Options
	pub, sub *connector

	delayQueues delayQueues

	mu     sync.Mutex
	closed bool
}

var _ broker.Broker = (*Broker)(nil)

// New returns a Broker over an existing connection, used for publishing and
// consuming alike. Set opts.Redial to let it reconnect; leave the
// connection's own experimental Config.Recovery off, because the Broker
// recovers its channels itself. Close does not close conn.
func New(conn *amqp.Connection, opts Options) (*Broker, error) {
	if conn == nil {
		return nil, broker.Errorf(semantics.InvalidArgument, "rabbitmq: new", "connection is nil")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	c := newConnector("publish+consume", opts.Redial, opts.Logger, opts.ReconnectMaxWait)
	c.adopt(conn)
	return &Broker{opts: opts, pub: c, sub: c}, nil
}

// Dial connects to the broker at an amqp:// or amqps:// URL (see the
// package documentation for its parameters; values in opts win over
// defaults but URL parameters win over opts) and returns a Broker that
// reconnects by itself. It fails at once, with a clear error, when the
// broker cannot be reached within ctx and the connect_timeout parameter.
func Dial(ctx context.Context, rawURL string, opts Options) (*Broker, error) {
	cfg, err := parseURL(rawURL, opts)
	if err != nil {
		return nil, err
	}
	return open(ctx, cfg)
}

func open(ctx context.Context, cfg *config) (*Broker, error) {
	opts, err := cfg.opts.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &Broker{opts: opts}
	b.pub = newConnector("publish", cfg.dialer("publish"), opts.Logger, opts.ReconnectMaxWait)
	b.sub = newConnector("consume", cfg.dialer("consume"), opts.Logger, opts.ReconnectMaxWait)
	if err := b.pub.connect(ctx); err != nil {
		b.pub.close(true)
		b.sub.close(true)
		return nil, &broker.Error{Kind: kindOf(err), Op: "rabbitmq: open " + cfg.redacted, Err: err}
	}
	return b, nil
}

func init() {
	d := broker.DriverFunc(func(ctx context.Context, u *url.URL) (broker.Broker, error) {
		cfg, err := parseParsedURL(u, Options{})
		if err != nil {
			return nil, err
		}
		return open(ctx, cfg)
	})
	broker.Register("amqp", d)
	broker.Register("amqps", d)
}

// Capabilities: consumer groups and fan-out (a queue per group bound to the
// topic), per-key ordering (with SubscriberOptions.Ordering = PerKey, a
// single active consumer per group), crash redelivery (unacknowledged
// messages return to the queue when their channel closes, or after
// SubscriberOptions.AckTimeout) and delayed nacks; with quorum queues also
// attempt counts and native dead-lettering.
func (b *Broker) Capabilities() semantics.Capabilities {
	quorum := b.opts.QueueType == Quorum
	return semantics.Capabilities{
		ConsumerGroups:   true,
		FanOut:           true,
		PerKeyOrdering:   true,
		CrashRedelivery:  true,
		DelayedNack:      true,
		AttemptCount:     quorum,
		DeadLetter:       quorum,
		NativeDeadLetter: quorum,
		MaxMessageSize:   b.opts.MaxMessageSize,
	}
}

// QueueName returns the queue that holds group's messages of topic.
func (b *Broker) QueueName(topic, group string) string {
	if group == "" {
		group = "default"
	}
	return b.opts.QueueName(topic, group)
}

// QueueInfo is what RabbitMQ says about a group's queue.
type QueueInfo struct {
	// Queue is the queue's name.
	Queue string
	// Messages ready for delivery: the group's backlog (lag). Messages
	// delivered but not yet acknowledged are not counted.
	Messages int
	// Consumers attached to the queue.
	Consumers int
}

// Inspect returns the depth and consumer count of group's queue for topic,
// for metrics and lag. A queue that does not exist is a NotFound error.
func (b *Broker) Inspect(ctx context.Context, topic, group string) (QueueInfo, error) {
	const op = "rabbitmq: inspect"
	name := b.QueueName(topic, group)
	ch, _, err := b.sub.channel(ctx)
	if err != nil {
		return QueueInfo{}, wrap(op, err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		return QueueInfo{}, wrap(op+" "+strconv.Quote(name), err)
	}
	return QueueInfo{Queue: name, Messages: q.Messages, Consumers: q.Consumers}, nil
}

// Backlog implements broker.BacklogReporter: Pending is the group queue's
// ready messages and Consumers its consumers. AMQP does not report
// unacknowledged messages, nor the ones waiting in delay queues, so
// InFlight and Delayed are -1.
func (b *Broker) Backlog(ctx context.Context, topic, group string) (broker.Backlog, error) {
	info, err := b.Inspect(ctx, topic, group)
	if err != nil {
		return broker.Backlog{}, err
	}
	return broker.Backlog{Pending: int64(info.Messages), InFlight: -1, Delayed: -1, Consumers: info.Consumers}, nil
}

var _ broker.BacklogReporter = (*Broker)(nil)

// DeleteSubscription deletes group's queue for topic with the messages in
// it, and the delay queues of its delayed nacks. The queue is declared
// again by the next subscriber of the group.
func (b *Broker) DeleteSubscription(ctx context.Context, topic, group string) error {
	const op = "rabbitmq: delete subscription"
	name := b.QueueName(topic, group)
	ch, _, err := b.sub.channel(ctx)
	if err != nil {
		return wrap(op, err)
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(name, false, false, false); err != nil {
		return wrap(op+" "+strconv.Quote(name), err)
	}
	for _, q := range b.delayQueues.forget(name) {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			return wrap(op+" "+strconv.Quote(q), err)
		}
	}
	return nil
}

// Close closes the broker's connections (not one given to New). Publishers
// and subscribers should be closed first; their later calls fail with
// ErrClosed.
func (b *Broker) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	owned := b.pub != b.sub
	err := b.pub.close(owned)
	if b.sub != b.pub {
		if err2 := b.sub.close(owned); err == nil {
			err = err2
		}
	}
	if err != nil && err != amqp.ErrClosed {
		return wrap("rabbitmq: close", err)
	}
	return nil
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// declareExchange declares (or with Passive verifies) the exchange.
func (b *Broker) declareExchange(ch *amqp.Channel) error {
	if b.opts.Passive {
		return ch.ExchangeDeclarePassive(b.opts.Exchange, b.opts.ExchangeType, true, false, false, false, nil)
	}
	return ch.ExchangeDeclare(b.opts.Exchange, b.opts.ExchangeType, true, false, false, false, nil)
}
