package rabbitmq

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// URL schemes this package registers with package broker.
const (
	Scheme    = "amqp"
	SchemeTLS = "amqps"
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

// Defaults and limits of Options.
const (
	// DefaultExchange is the exchange publishers send to.
	DefaultExchange = "queuekit"
	// DefaultExchangeType routes a message to the groups of exactly its
	// topic.
	DefaultExchangeType = "direct"
	// DefaultPrefetch is the subscribers' prefetch: with acks coalesced,
	// 1,000 lets a quorum queue's consumer run at the speed of a raw
	// amqp091 consumer at its best (BenchmarkRabbitConsume; 128 gave a
	// third of it). The client holds up to that many messages per
	// subscriber: lower it for large messages, or where competing
	// subscribers should share a small backlog evenly.
	DefaultPrefetch = 1000
	// DefaultConfirmWindow is how many publishes a publisher keeps
	// unconfirmed at most: 1,000 keeps the queue's log busy
	// (BenchmarkRabbitPublish; larger windows were no faster).
	DefaultConfirmWindow = 1000
	// MaxConfirmWindow is the largest ConfirmWindow.
	MaxConfirmWindow = 65535
	// DefaultMaxMessageSize is RabbitMQ's own default max_message_size.
	DefaultMaxMessageSize = 128 << 20
	// MaxMessageSizeLimit is the largest MaxMessageSize: RabbitMQ refuses
	// a max_message_size over 512 MiB.
	MaxMessageSizeLimit = 512 << 20
)

// Options configure a Broker. The zero value is usable: it declares a
// durable direct exchange "queuekit" and quorum queues.
type Options struct {
	// Exchange publishers send to, with the topic as routing key; default
	// "queuekit". At most 255 bytes of UTF-8.
	Exchange string
	// ExchangeType is "direct" (default: a group receives exactly its
	// topic) or "topic" (a group's topic may hold the wildcards * and #).
	ExchangeType string
	// QueueType of the group queues: Quorum (default) or Classic.
	QueueType string
	// Prefetch is the subscribers' default prefetch (basic.qos), used when
	// SubscriberOptions.Prefetch is 0; default 1000, at most 65535.
	Prefetch int
	// ConfirmWindow bounds the publishes a publisher has sent but the broker
	// has not confirmed yet; default 1000, at most MaxConfirmWindow.
	ConfirmWindow int
	// Passive verifies that the exchange (and for subscribers the queue)
	// exists instead of declaring it, for deployments whose topology is
	// managed elsewhere. A missing one is a NotFound error. Nothing is
	// recorded in the topology registry (see DeleteTopic).
	Passive bool
	// MaxMessageSize is the largest message (payload, key, ID and headers)
	// Publish accepts; default 128 MiB, RabbitMQ's own default limit; at
	// most MaxMessageSizeLimit.
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
	// The names it returns are checked like the default ones.
	QueueName func(topic, group string) string
	// ConnectionName names the connections in RabbitMQ's management UI
	// and rabbitmqctl list_connections, followed by " publish" or
	// " consume"; default "queuekit".
	ConnectionName string
	// Logger receives connection loss and recovery events; default
	// slog.Default().
	Logger *slog.Logger
	// NoRegistry turns off the topology registries, the stream queue per
	// topic in which the Broker records the queues it declares (see the
	// package documentation): DeadLetterQueues, Queues and DeleteTopic
	// then know only what this Broker declared.
	NoRegistry bool
	// OnDeclare, when set, is called with the name of every queue the
	// broker declares: group, dead-letter, delay and registry queues.
	OnDeclare func(queue string)

	// ackDelay bounds how long a subscriber holds an ack before sending
	// it (default defaultAckDelay); tests lengthen it.
	ackDelay time.Duration
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
	if o.ackDelay == 0 {
		o.ackDelay = defaultAckDelay
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
	if err := checkName(op, "exchange", o.Exchange, maxNameLen); err != nil {
		return o, err
	}
	switch {
	case o.ExchangeType != "direct" && o.ExchangeType != "topic":
		return o, driver.Errorf(semantics.InvalidArgument, op, "exchange type %q is not direct or topic", o.ExchangeType)
	case o.QueueType != Quorum && o.QueueType != Classic:
		return o, driver.Errorf(semantics.InvalidArgument, op, "queue type %q is not quorum or classic", o.QueueType)
	case o.Prefetch < 0 || o.Prefetch > 65535:
		return o, driver.Errorf(semantics.InvalidArgument, op, "prefetch %d is not within 1..65535", o.Prefetch)
	case o.ConfirmWindow < 0 || o.ConfirmWindow > MaxConfirmWindow:
		return o, driver.Errorf(semantics.InvalidArgument, op, "confirm window %d is not within 1..%d", o.ConfirmWindow, MaxConfirmWindow)
	case o.MaxMessageSize < 0 || o.MaxMessageSize > MaxMessageSizeLimit:
		return o, driver.Errorf(semantics.InvalidArgument, op, "max message size %d is not within 1..%d (RabbitMQ's largest max_message_size)", o.MaxMessageSize, MaxMessageSizeLimit)
	case o.ReconnectMaxWait < 0:
		return o, driver.Errorf(semantics.InvalidArgument, op, "reconnect max wait %v must not be negative", o.ReconnectMaxWait)
	}
	return o, nil
}

// Broker is the RabbitMQ driver: wrap it with broker.New to use it (Dial and
// New return it so that its admin methods stay at hand). It keeps one
// connection for publishing and one for consuming (a single one when made
// by New), and reconnects them when they drop.
type Broker struct {
	opts     Options
	pub, sub *connector

	delayQueues delayQueues // delay and schedule queues declared lately
	registry    registry
	active      activeLocks
	schedWarned atomic.Bool // bindSchedule's warning was logged
}

var (
	_ driver.Broker          = (*Broker)(nil)
	_ driver.Declarer        = (*Broker)(nil)
	_ driver.BacklogReporter = (*Broker)(nil)
	_ driver.As              = (*Broker)(nil)
)

// New returns a Broker over an existing connection, used for publishing and
// consuming alike. Set opts.Redial to let it reconnect; leave the
// connection's own experimental Config.Recovery off, because the Broker
// recovers its channels itself. Close does not close conn.
func New(conn *amqp.Connection, opts Options) (*Broker, error) {
	if conn == nil {
		return nil, driver.Errorf(semantics.InvalidArgument, "rabbitmq: new", "connection is nil")
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
		_ = b.pub.close(true)
		_ = b.sub.close(true)
		return nil, &driver.Error{Kind: kindOf(err), Op: "rabbitmq: open " + cfg.redacted, Err: err}
	}
	return b, nil
}

// Capabilities: consumer groups and fan-out (a queue per group bound to the
// topic), per-key ordering (with SubscriberOptions.Ordering = PerKey, a
// single active consumer per group), crash redelivery (unacknowledged
// messages return to the queue when their channel closes, or after
// SubscriberOptions.AckTimeout), delayed nacks and scheduled delivery (up
// to 4,000,000 s ahead; not with passive=true, which declares nothing);
// with quorum queues also attempt counts and native dead-lettering.
func (b *Broker) Capabilities() semantics.Capabilities {
	quorum := b.opts.QueueType == Quorum
	return semantics.Capabilities{
		ConsumerGroups:    true,
		FanOut:            true,
		PerKeyOrdering:    true,
		CrashRedelivery:   true,
		DelayedNack:       true,
		AttemptCount:      quorum,
		DeadLetter:        quorum,
		NativeDeadLetter:  quorum,
		MaxMessageSize:    b.opts.MaxMessageSize,
		ScheduledDelivery: !b.opts.Passive,
		MaxDelay:          maxDelay,
	}
}

// As sets target, a **amqp.Connection, to the publishing connection (the
// only one of a Broker made by New), as it is now: it is replaced after a
// reconnection. It reports false when there is none (lost, or closed).
func (b *Broker) As(target any) bool {
	t, ok := target.(**amqp.Connection)
	if !ok || t == nil {
		return false
	}
	conn := b.pub.current()
	if conn == nil {
		return false
	}
	*t = conn
	return true
}

// QueueName returns the queue that holds group's messages of topic.
func (b *Broker) QueueName(topic, group string) string {
	if group == "" {
		group = "default"
	}
	return b.opts.QueueName(topic, group)
}

// Declare implements driver.Declarer: it declares the exchange and, for
// each group, the group's queue bound to topic, so that every message
// published afterwards reaches it. The queues get the default settings of
// a subscriber (queue type; no dead-lettering, no single active consumer);
// a queue that exists already is kept as it is, whatever its settings.
// Queue arguments are fixed when a queue is first declared: ordered
// subscribers of a group declared here take turns through an activity
// lock instead (see NewSubscriber), but a group whose subscribers set
// MaxAttempts is best declared by DeclareSubscription, or by its first
// subscriber. Declare with no group declares only the exchange. With
// Passive it verifies instead.
func (b *Broker) Declare(ctx context.Context, topic string, groups []string) error {
	const op = "rabbitmq: declare"
	if err := checkName(op, "topic", topic, maxNameLen); err != nil {
		return err
	}
	subs := make([]*subscriber, len(groups))
	for i, g := range groups {
		s, err := b.plan(op, driver.SubscriberOptions{Topic: topic, Group: g, DeadLetterTopic: driver.DeadLetterTopic(topic)})
		if err != nil {
			return err
		}
		s.existingOK = true
		subs[i] = s
	}
	if len(subs) == 0 {
		ch, _, err := b.sub.channel(ctx)
		if err != nil {
			return wrap(op, err)
		}
		defer ch.Close()
		return wrap(op+": exchange "+strconv.Quote(b.opts.Exchange), b.declareExchange(ch))
	}
	for _, s := range subs {
		if err := s.declare(ctx); err != nil {
			return err
		}
	}
	return nil
}

// DeclareSubscription declares what NewSubscriber(opts) would — the
// exchange, the group's queue with the arguments opts ask for (queue type,
// dead-lettering after opts.MaxAttempts, single active consumer for
// Ordering PerKey), its binding and dead-letter queue — without consuming:
// messages published afterwards wait for the group's subscribers. Unlike
// Declare it fails (InvalidArgument) when the queue exists with other
// arguments. Empty Group and DeadLetterTopic take their defaults.
func (b *Broker) DeclareSubscription(ctx context.Context, opts driver.SubscriberOptions) error {
	if opts.Group == "" {
		opts.Group = "default"
	}
	if opts.DeadLetterTopic == "" {
		opts.DeadLetterTopic = driver.DeadLetterTopic(opts.Topic)
	}
	s, err := b.plan("rabbitmq: declare subscription", opts)
	if err != nil {
		return err
	}
	return s.declare(ctx)
}

// Close closes the broker's connections (not one given to New). Package
// broker closes the publishers and subscribers first; their later calls,
// and the admin methods', fail with ErrClosed.
func (b *Broker) Close(ctx context.Context) error {
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

// declareExchange declares (or with Passive verifies) the exchange.
func (b *Broker) declareExchange(ch *amqp.Channel) error {
	if b.opts.Passive {
		return ch.ExchangeDeclarePassive(b.opts.Exchange, b.opts.ExchangeType, true, false, false, false, nil)
	}
	return ch.ExchangeDeclare(b.opts.Exchange, b.opts.ExchangeType, true, false, false, false, nil)
}

// declared reports a queue the broker declared (Options.OnDeclare).
func (b *Broker) declared(queue string) {
	if b.opts.OnDeclare != nil {
		b.opts.OnDeclare(queue)
	}
}
