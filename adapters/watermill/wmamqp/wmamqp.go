// Package wmamqp opens a queuekit driver over watermill-amqp
// (github.com/ThreeDotsLabs/watermill-amqp/v3), through the bridge in
// package watermill, so that queuekit code (Consume, the middleware, the
// conformance suite) runs on a Watermill RabbitMQ setup:
//
//	wb, err := wmamqp.New(url, wmamqp.Options{})
//	b := broker.New(wb)
//
// # Topology and settings
//
// By default (Config) it uses watermill-amqp's NewDurablePubSubConfig — a
// durable fanout exchange per topic, a durable classic queue per consumer
// group named QueueName(topic, group), persistent messages, prefetch 1 per
// subscription — with publisher confirms (Publish.ConfirmDelivery) and a pool
// of publishing channels (Publish.ChannelPoolSize). One AMQP connection is
// shared by the publisher and every subscriber of a Broker.
//
// # Delivery semantics (measured by the conformance suite)
//
//   - Publish returns once RabbitMQ confirmed each message, one message at a
//     time (watermill-amqp waits for each confirmation before the next
//     publish).
//   - Topology: Broker.Declare(topic, groups...) declares the topic's
//     exchange and each group's queue, bound to it (watermill-amqp's
//     SubscribeInitialize), as NewSubscriber does; the group then keeps
//     every message published afterwards. A Publish to a topic on which no
//     group was declared or subscribed to through this broker is refused
//     with broker.ErrNoGroup: RabbitMQ would drop it when no queue is bound,
//     and watermill-amqp cannot tell (it has no mandatory-publish returns).
//     Bindings made by another process are not seen: declare the groups
//     there too (idempotent), or name the topic with
//     watermill.Broker.ConsumedOutside.
//   - A queuekit subscriber makes SubscriberOptions.Prefetch Subscribe calls
//     (default watermill.DefaultPrefetch), one AMQP channel and consumer each,
//     since watermill-amqp hands out the next message of a subscription only
//     after the previous one was settled. They and the subscribers of the same
//     group compete for the group's queue (ConsumerGroups); every group gets
//     every message (FanOut).
//   - Ack acks; Nack requeues (after the delay, held by the bridge; the
//     subscription it came from hands out nothing else meanwhile). Deliveries
//     not settled when a subscriber closes or its connection drops are
//     requeued by RabbitMQ (CrashRedelivery).
//   - SubscriberOptions.Ordering = PerKey declares the group's queue with
//     x-single-active-consumer and makes one Subscribe call: one consumer of
//     the group receives at a time, one message at a time, in queue order
//     (PerKeyOrdering). A group's Ordering must not change: RabbitMQ refuses
//     to declare a queue again with other arguments, and Declare declares
//     it without, so let NewSubscriber declare a PerKey group.
//   - Guarantee AtMostOnce is refused (semantics.Unsupported):
//     watermill-amqp consumes with manual acks and sends a Watermill Ack to
//     RabbitMQ later, from its own goroutine, without confirmation (and
//     nacks instead when its subscriber closes at the same moment), so an
//     acked message can be delivered again. Queuekit's rabbitmq adapter
//     consumes with no-ack under AtMostOnce.
//   - No attempt count (watermill-amqp's classic queues have none; it only
//     marks redeliveries with the _watermill_amqp_redelivered metadata,
//     which arrives as a header) and no dead-lettering.
//   - Messages over MaxMessageSize (default RabbitMQ's 128 MiB) fail before
//     any I/O, and so do topics and groups whose exchange or queue name
//     would be over AMQP's 255 bytes.
//
// Broker.As gives the *amqp091.Connection and watermill-amqp's
// *amqp.ConnectionWrapper. Credentials never appear in errors.
package wmamqp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/adapters/watermill"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Capabilities are the claims watermill-amqp keeps with the default Config
// (see the package doc).
var Capabilities = semantics.Capabilities{ConsumerGroups: true, FanOut: true, CrashRedelivery: true, PerKeyOrdering: true}

// DefaultMaxMessageSize is RabbitMQ's default max_message_size, 128 MiB.
const DefaultMaxMessageSize = 128 << 20

// DefaultChannelPoolSize is the number of publishing channels of Config.
const DefaultChannelPoolSize = 16

// Options configure New. The zero value uses Config(url).
type Options struct {
	// Config replaces Config(url) as the watermill-amqp configuration. Its
	// Queue.GenerateName is set per subscription to QueueName with the
	// subscription's group.
	Config *wamqp.Config
	// Logger receives watermill-amqp's logs; default none.
	Logger wm.LoggerAdapter
	// MaxMessageSize is the largest message Publish accepts; default
	// DefaultMaxMessageSize.
	MaxMessageSize int

	// declared, when set, is told every queue and exchange the broker may
	// declare (tests delete them afterwards).
	declared func(queue, exchange string)
}

// Config returns watermill-amqp's durable pub/sub configuration
// (NewDurablePubSubConfig) with publisher confirms, DefaultChannelPoolSize
// publishing channels, and dials bounded by 10 s with a 10 s heartbeat.
func Config(amqpURL string) wamqp.Config {
	c := wamqp.NewDurablePubSubConfig(amqpURL, nil)
	c.Publish.ConfirmDelivery = true
	c.Publish.ChannelPoolSize = DefaultChannelPoolSize
	c.Connection.AmqpConfig = &amqp091.Config{
		Dial:      amqp091.DefaultDial(10 * time.Second),
		Heartbeat: 10 * time.Second,
		Locale:    "en_US",
	}
	return c
}

// QueueName is the queue of group on topic: "<topic>_<group>", as
// watermill-amqp's GenerateQueueNameTopicNameWithSuffix names it.
func QueueName(topic, group string) string {
	return wamqp.GenerateQueueNameTopicNameWithSuffix(group)(topic)
}

// New connects to RabbitMQ at amqpURL and returns a queuekit driver over
// watermill-amqp, claiming Capabilities; wrap it with broker.New.
func New(amqpURL string, opts Options) (*watermill.Broker, error) {
	const op = "watermill-amqp: open"
	cfg := Config(amqpURL)
	if opts.Config != nil {
		cfg = *opts.Config
	}
	if opts.Logger == nil {
		opts.Logger = wm.NopLogger{}
	}
	if opts.MaxMessageSize == 0 {
		opts.MaxMessageSize = DefaultMaxMessageSize
	}
	conn, err := wamqp.NewConnection(cfg.Connection, opts.Logger)
	if err != nil {
		return nil, driver.WrapError(semantics.Transient, op, redact(err, cfg.Connection.AmqpURI))
	}
	pub, err := wamqp.NewPublisherWithConnection(cfg, opts.Logger, conn)
	if err != nil {
		_ = conn.Close()
		return nil, driver.WrapError(semantics.InvalidArgument, op, redact(err, cfg.Connection.AmqpURI))
	}
	declared := opts.declared
	var wpub message.Publisher = pub
	if declared != nil {
		wpub = declaring{pub, cfg, declared}
	}
	return watermill.New(watermill.Options{
		Name:      "watermill-amqp",
		Publisher: wpub,
		NewSubscriber: func(_ context.Context, o driver.SubscriberOptions) (message.Subscriber, error) {
			c := cfg
			c.Queue.GenerateName = wamqp.GenerateQueueNameTopicNameWithSuffix(o.Group)
			if o.Ordering == semantics.PerKey {
				args := amqp091.Table{"x-single-active-consumer": true}
				for k, v := range c.Queue.Arguments {
					args[k] = v
				}
				c.Queue.Arguments = args
			}
			if declared != nil {
				declared(c.Queue.GenerateName(o.Topic), c.Exchange.GenerateName(o.Topic))
			}
			return wamqp.NewSubscriberWithConnection(c, opts.Logger, conn)
		},
		Competing:      true,
		Capabilities:   Capabilities,
		MaxMessageSize: opts.MaxMessageSize,
		CheckNames:     func(topic, group string) error { return checkNames(cfg, topic, group) },
		As: func(target any) bool {
			switch t := target.(type) {
			case **amqp091.Connection:
				*t = conn.Connection()
				return *t != nil
			case **wamqp.ConnectionWrapper:
				*t = conn
				return true
			}
			return false
		},
		OnClose: conn.Close,
	})
}

// maxName is AMQP's limit on exchange and queue names (a short string).
const maxName = 255

// checkNames refuses a topic or group whose exchange or queue name would be
// over AMQP's limit.
func checkNames(cfg wamqp.Config, topic, group string) error {
	if x := cfg.Exchange.GenerateName(topic); len(x) > maxName {
		return fmt.Errorf("topic %q makes exchange name %q of %d bytes, over AMQP's %d", topic, x, len(x), maxName)
	}
	if group == "" {
		return nil
	}
	if q := QueueName(topic, group); len(q) > maxName {
		return fmt.Errorf("topic %q and group %q make queue name %q of %d bytes, over AMQP's %d", topic, group, q, len(q), maxName)
	}
	return nil
}

// declaring tells Options.declared about the exchanges Publish declares.
type declaring struct {
	*wamqp.Publisher
	cfg      wamqp.Config
	declared func(queue, exchange string)
}

func (d declaring) Publish(topic string, msgs ...*message.Message) error {
	if d.declared != nil {
		d.declared("", d.cfg.Exchange.GenerateName(topic))
	}
	return d.Publisher.Publish(topic, msgs...)
}

// redact removes the URL's password from err's text.
func redact(err error, rawURL string) error {
	u, perr := url.Parse(rawURL)
	if perr != nil {
		return err
	}
	pw, ok := u.User.Password()
	if !ok || pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), pw, "xxxxx"))
}
