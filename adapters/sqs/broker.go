package sqs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Size limits. Publish refuses a message whose Message.Size (payload, key,
// ID and headers) is over Options.MaxMessageSize, whose default is
// DefaultMaxMessageSize in queue mode and DefaultFanOutMaxMessageSize in
// fan-out mode: SNS takes 256 KiB on the wire, and a binary payload
// travels base64-encoded (4/3 of its size), so 190 KiB is what always
// fits. On the wire a message may take up to WireLimit in queue mode
// (queues the adapter creates accept 1 MiB) and FanOutWireLimit through
// SNS; a message whose encoding is over that is refused before any request
// too.
const (
	DefaultMaxMessageSize       = 256 * 1024
	DefaultFanOutMaxMessageSize = 190 * 1024
	WireLimit                   = 1024 * 1024
	FanOutWireLimit             = 256 * 1024
)

// Defaults of the Options fields.
const (
	// DefaultWaitTime is 5s, not SQS's 20s maximum: Subscriber.Close waits
	// for the polls in flight (a poll abandoned would take messages and hide
	// them for a visibility timeout), so 20s made every Close of an idle
	// subscriber take up to 20s. The cost: an idle poller makes 4 times as
	// many empty receives (about 0.5M billed requests a month, ~$0.20).
	DefaultWaitTime          = 5 * time.Second
	DefaultVisibilityTimeout = 30 * time.Second
	DefaultMaxMessages       = 10
	// DefaultPollers is 8: with SQS's round trips (10-20ms in a region) a
	// poller brings at most 10 messages per trip, and two (the default
	// before) held a backlog to half of what eight raw pollers drain
	// (measured with 15ms added per request: 970 msg/s against 2,080).
	// Only IdlePollers of them poll an idle queue (see Options.Pollers), so
	// an idle subscriber costs what it did with two.
	DefaultPollers        = 8
	DefaultMaxExtension   = time.Hour
	DefaultRequestTimeout = 30 * time.Second
	// IdlePollers is how many pollers a subscriber keeps polling whatever
	// the queue holds (fewer when Options.Pollers is smaller).
	IdlePollers = 2
)

// Options configure a Broker. The zero value is queue mode with standard
// queues and the defaults above.
type Options struct {
	// SNS, when set, turns on fan-out: a topic is an SNS topic, and each
	// subscriber group reads its own SQS queue (GroupQueueName) subscribed
	// to it with raw message delivery, so every group gets every message.
	// When nil (queue mode), a topic is one SQS queue (QueueName) and all
	// subscribers compete for its messages whatever their group.
	SNS *sns.Client
	// FIFO makes every topic a FIFO queue (and FIFO SNS topic): names get
	// the ".fifo" suffix, the message key is the MessageGroupId, so
	// messages of one key are delivered in order, and the message ID is
	// the MessageDeduplicationId. A topic already named "*.fifo" is FIFO
	// either way.
	FIFO bool
	// WaitTime is how long one ReceiveMessage long-polls, in whole seconds
	// up to 20s; default 20s. Negative means 0: short polling, with a
	// 200ms rest after an empty receive.
	WaitTime time.Duration
	// VisibilityTimeout is how long a received message stays hidden from
	// other consumers, in whole seconds (rounded up), unless
	// SubscriberOptions.AckTimeout says otherwise; default 30s.
	VisibilityTimeout time.Duration
	// MaxMessages is the most messages one ReceiveMessage asks for, 1 to
	// 10; default 10.
	MaxMessages int
	// Pollers is the most ReceiveMessage calls a subscriber runs at once,
	// 1 to 64; default DefaultPollers (8). IdlePollers of them always
	// poll; the others join one at a time while receives come back full
	// (a backlog), and each leaves after a receive that does not.
	Pollers int
	// MaxExtension bounds the automatic visibility extension: a delivery
	// held unsettled longer than this is no longer extended (nor counted
	// against Prefetch) and the queue redelivers it. Default 1h, at most
	// 12h (SQS's own limit).
	MaxExtension time.Duration
	// MaxMessageSize is the largest message Publish sends, by
	// Message.Size; default DefaultMaxMessageSize (256 KiB), or
	// DefaultFanOutMaxMessageSize (190 KiB) in fan-out mode. At most
	// WireLimit (FanOutWireLimit in fan-out mode).
	MaxMessageSize int
	// NoCreate stops Declare and NewSubscriber from creating missing
	// queues, topics and subscriptions; they must exist and a missing one
	// is a NotFound error. (Publish never creates anything.)
	NoCreate bool
	// RequestTimeout bounds each request made for a batch of several
	// callers (publish, ack, nack, visibility extension); default 30s.
	RequestTimeout time.Duration
}

func (o Options) withDefaults() (Options, error) {
	const op = "sqs: new"
	if o.WaitTime == 0 {
		o.WaitTime = DefaultWaitTime
	}
	o.WaitTime = max(o.WaitTime, 0)
	if o.VisibilityTimeout == 0 {
		o.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if o.MaxMessages == 0 {
		o.MaxMessages = DefaultMaxMessages
	}
	if o.Pollers == 0 {
		o.Pollers = DefaultPollers
	}
	if o.MaxExtension == 0 {
		o.MaxExtension = DefaultMaxExtension
	}
	wire, size := WireLimit, DefaultMaxMessageSize
	if o.SNS != nil {
		wire, size = FanOutWireLimit, DefaultFanOutMaxMessageSize
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = size
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	switch {
	case o.WaitTime > maxWaitTime || o.WaitTime%time.Second != 0:
		return o, driver.Errorf(semantics.InvalidArgument, op, "WaitTime %v is not a whole number of seconds within 0s-20s (the SQS maximum)", o.WaitTime)
	case o.VisibilityTimeout < 0 || o.VisibilityTimeout > maxVisibility:
		return o, driver.Errorf(semantics.InvalidArgument, op, "VisibilityTimeout %v is not within 0-12h", o.VisibilityTimeout)
	case o.MaxMessages < 1 || o.MaxMessages > 10:
		return o, driver.Errorf(semantics.InvalidArgument, op, "MaxMessages %d is not within 1-10", o.MaxMessages)
	case o.Pollers < 1 || o.Pollers > maxPollers:
		return o, driver.Errorf(semantics.InvalidArgument, op, "Pollers %d is not within 1-%d", o.Pollers, maxPollers)
	case o.MaxMessageSize < 1 || o.MaxMessageSize > wire:
		return o, driver.Errorf(semantics.InvalidArgument, op, "MaxMessageSize %d is not within 1-%d", o.MaxMessageSize, wire)
	case o.MaxExtension < 0 || o.MaxExtension > maxVisibility:
		return o, driver.Errorf(semantics.InvalidArgument, op, "MaxExtension %v is not within 0-12h", o.MaxExtension)
	case o.RequestTimeout < 0:
		return o, driver.Errorf(semantics.InvalidArgument, op, "RequestTimeout %v must not be negative", o.RequestTimeout)
	}
	return o, nil
}

// Broker is a connection to SQS (and SNS in fan-out mode): the adapter's
// driver.Broker, which users wrap with broker.New (or get from
// broker.Open). Besides the driver contract (Declarer, GroupChecker,
// BacklogReporter, As) it has the SQS tools: EnsureQueue, Redrive,
// QueueDepth and Depth.
type Broker struct {
	client *awssqs.Client
	sns    *sns.Client
	opts   Options

	mu      sync.Mutex
	urls    map[string]string // queue name -> URL
	arns    map[string]string // queue URL -> ARN
	topics  map[string]string // SNS topic name -> ARN
	senders map[string]*batcher[*encoded]
}

// New returns a Broker over an SQS client the caller configured (and an
// SNS client in opts.SNS for fan-out); wrap it with broker.New. Closing the
// Broker does not close the clients.
func New(client *awssqs.Client, opts Options) (*Broker, error) {
	if client == nil {
		return nil, driver.Errorf(semantics.InvalidArgument, "sqs: new", "the SQS client is nil")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Broker{
		client:  client,
		sns:     opts.SNS,
		opts:    opts,
		urls:    make(map[string]string),
		arns:    make(map[string]string),
		topics:  make(map[string]string),
		senders: make(map[string]*batcher[*encoded]),
	}, nil
}

// Client returns the SQS client the broker uses: the escape hatch to the
// SDK.
func (b *Broker) Client() *awssqs.Client { return b.client }

// SNSClient returns the SNS client of a fan-out broker, or nil.
func (b *Broker) SNSClient() *sns.Client { return b.sns }

// Options returns the broker's options with defaults filled in.
func (b *Broker) Options() Options { return b.opts }

// As sets target, a **sqs.Client or a **sns.Client (fan-out mode only), to
// the SDK client the broker uses.
func (b *Broker) As(target any) bool {
	switch t := target.(type) {
	case **awssqs.Client:
		*t = b.client
		return true
	case **sns.Client:
		if b.sns == nil {
			return false
		}
		*t = b.sns
		return true
	}
	return false
}

// Capabilities: competing consumers, crash redelivery (visibility
// timeout), delayed nack (ChangeMessageVisibility), attempt counts
// (ApproximateReceiveCount) and native dead-lettering (RedrivePolicy)
// always; fan-out with an SNS client; per-key ordering on FIFO queues.
func (b *Broker) Capabilities() semantics.Capabilities {
	return semantics.Capabilities{
		ConsumerGroups:   true,
		FanOut:           b.sns != nil,
		PerKeyOrdering:   b.opts.FIFO,
		CrashRedelivery:  true,
		DelayedNack:      true,
		AttemptCount:     true,
		DeadLetter:       true,
		NativeDeadLetter: true,
		MaxMessageSize:   b.opts.MaxMessageSize,
		// Per-message DelaySeconds: standard queues only (FIFO queues
		// refuse it, an SNS publish has none), up to 15 minutes.
		ScheduledDelivery: !b.opts.FIFO && b.sns == nil,
		MaxDelay:          b.maxDelay(),
	}
}

func (b *Broker) maxDelay() time.Duration {
	if b.opts.FIFO || b.sns != nil {
		return 0
	}
	return 15 * time.Minute
}

// Close releases nothing: the SDK clients hold no connections that need
// closing, and package broker closes the publishers and subscribers first.
func (b *Broker) Close(ctx context.Context) error { return nil }

// Declare creates topic and its groups as NewSubscriber would, so that
// every message published afterwards reaches each group. In queue mode
// that is the topic's queue, whatever the groups (every group reads the
// one queue); in fan-out mode the SNS topic and, for each group, its queue
// subscribed to the topic with raw message delivery. It creates nothing
// with create=false (Options.NoCreate): it then checks that all of it
// exists.
func (b *Broker) Declare(ctx context.Context, topic string, groups []string) error {
	fifo := b.fifo(topic)
	if b.sns == nil {
		_, err := b.EnsureQueue(ctx, QueueName(topic, b.opts.FIFO), QueueSpec{FIFO: fifo})
		return err
	}
	if _, err := b.topicARN(ctx, TopicName(topic, b.opts.FIFO)); err != nil {
		return err
	}
	for _, g := range groups {
		info, err := b.EnsureQueue(ctx, GroupQueueName(topic, g, b.opts.FIFO), QueueSpec{FIFO: fifo})
		if err != nil {
			return err
		}
		if err := b.subscribeQueue(ctx, topic, info); err != nil {
			return err
		}
	}
	return nil
}

// HasGroup reports whether a message published to topic reaches a group.
// In fan-out mode that is whether the SNS topic exists and has a
// subscription (ListSubscriptionsByTopic): SNS drops what is published to a
// topic without one. In queue mode it answers true without asking: Publish
// itself refuses a queue that does not exist, with an error matching
// driver.ErrNoGroup.
func (b *Broker) HasGroup(ctx context.Context, topic string) (bool, error) {
	if b.sns == nil {
		return true, nil
	}
	arn, err := b.existingTopic(ctx, TopicName(topic, b.opts.FIFO))
	if errors.Is(err, driver.ErrNoGroup) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return b.hasSubscription(ctx, arn)
}

// hasSubscription reports whether SNS topic arn has a confirmed
// subscription.
func (b *Broker) hasSubscription(ctx context.Context, arn string) (bool, error) {
	pages := sns.NewListSubscriptionsByTopicPaginator(b.sns, &sns.ListSubscriptionsByTopicInput{TopicArn: &arn})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			if kindOf(err) == semantics.NotFound {
				b.forgetTopicARN(arn)
				return false, nil
			}
			return false, wrap("sqs: list SNS subscriptions", err)
		}
		for _, s := range page.Subscriptions {
			if a := aws.ToString(s.SubscriptionArn); a != "" && a != "PendingConfirmation" {
				return true, nil
			}
		}
	}
	return false, nil
}

// Backlog reports the message counts of the queue that group reads on
// topic (see SubscriptionQueue): Pending is its visible messages, InFlight
// those received and not yet deleted or visible again, Delayed those whose
// delay (or Nack delay) has not passed. SQS cannot tell how many consumers
// there are (-1). A missing queue is a NotFound error matching
// driver.ErrNoGroup.
func (b *Broker) Backlog(ctx context.Context, topic, group string) (driver.Backlog, error) {
	d, err := b.Depth(ctx, topic, group)
	if err != nil {
		return driver.Backlog{}, err
	}
	return driver.Backlog{Pending: d.Visible, InFlight: d.InFlight, Delayed: d.Delayed, Consumers: -1}, nil
}

// wireLimit is the most bytes a message may take on the wire.
func (b *Broker) wireLimit() int {
	if b.sns != nil {
		return FanOutWireLimit
	}
	return WireLimit
}

// fifo reports whether the queue or topic that name maps to is FIFO.
func (b *Broker) fifo(name string) bool {
	return b.opts.FIFO || strings.HasSuffix(name, fifoSuffix)
}

// queueARN returns the ARN of the queue at queueURL.
func (b *Broker) queueARN(ctx context.Context, queueURL string) (string, error) {
	b.mu.Lock()
	a, ok := b.arns[queueURL]
	b.mu.Unlock()
	if ok {
		return a, nil
	}
	out, err := b.client.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(queueURL),
		AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameQueueArn},
	})
	if err != nil {
		return "", wrap("sqs: queue attributes", err)
	}
	a = out.Attributes[string(types.QueueAttributeNameQueueArn)]
	if a == "" {
		return "", driver.Errorf(semantics.Permanent, "sqs: queue attributes", "no QueueArn for %s", queueURL)
	}
	b.mu.Lock()
	b.arns[queueURL] = a
	b.mu.Unlock()
	return a, nil
}

// topicARN returns the ARN of SNS topic name (a name or an ARN), creating
// it when it is missing and creation is allowed.
func (b *Broker) topicARN(ctx context.Context, name string) (string, error) {
	if b.opts.NoCreate {
		return b.existingTopic(ctx, name)
	}
	if isTopicARN(name) {
		return name, nil
	}
	if a, ok := b.cachedTopic(name); ok {
		return a, nil
	}
	// CreateTopic is idempotent: it returns the ARN of an existing topic.
	in := &sns.CreateTopicInput{Name: aws.String(name)}
	if strings.HasSuffix(name, fifoSuffix) {
		in.Attributes = map[string]string{"FifoTopic": "true"}
	}
	out, err := b.sns.CreateTopic(ctx, in)
	if err != nil {
		return "", wrap("sqs: create SNS topic "+name, err)
	}
	a := aws.ToString(out.TopicArn)
	b.mu.Lock()
	b.topics[name] = a
	b.mu.Unlock()
	return a, nil
}

func (b *Broker) cachedTopic(name string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.topics[name]
	return a, ok
}

// existingTopic returns the ARN of SNS topic name without creating it; a
// missing topic is a NotFound error matching driver.ErrNoGroup.
func (b *Broker) existingTopic(ctx context.Context, name string) (string, error) {
	if a, ok := b.cachedTopic(name); ok {
		return a, nil
	}
	var a string
	var err error
	if isTopicARN(name) {
		a = name
		_, err = b.sns.GetTopicAttributes(ctx, &sns.GetTopicAttributesInput{TopicArn: &a})
		err = wrap("sqs: SNS topic "+name, err)
	} else {
		a, err = b.findTopic(ctx, name)
	}
	if driver.KindOf(err) == semantics.NotFound {
		return "", noGroup("sqs: SNS topic", "SNS topic %s does not exist", name)
	}
	if err != nil {
		return "", err
	}
	b.mu.Lock()
	b.topics[name] = a
	b.mu.Unlock()
	return a, nil
}

// findTopic looks topic name up with ListTopics.
func (b *Broker) findTopic(ctx context.Context, name string) (string, error) {
	pages := sns.NewListTopicsPaginator(b.sns, &sns.ListTopicsInput{})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return "", wrap("sqs: list SNS topics", err)
		}
		for _, t := range page.Topics {
			if arn := aws.ToString(t.TopicArn); strings.HasSuffix(arn, ":"+name) {
				return arn, nil
			}
		}
	}
	return "", driver.Errorf(semantics.NotFound, "sqs: SNS topic", "topic %s does not exist", name)
}

// forget drops cached names after a NotFound, so that the next call looks
// again (and creates, where allowed).
func (b *Broker) forget(name string) {
	b.mu.Lock()
	delete(b.urls, name)
	delete(b.topics, name)
	b.mu.Unlock()
}

// forgetTopicARN drops the cached names of SNS topic arn.
func (b *Broker) forgetTopicARN(arn string) {
	b.mu.Lock()
	for name, a := range b.topics {
		if a == arn {
			delete(b.topics, name)
		}
	}
	b.mu.Unlock()
}

// String describes the broker's mode, for logs.
func (b *Broker) String() string {
	mode := "queue"
	if b.sns != nil {
		mode = "fan-out"
	}
	return fmt.Sprintf("sqs broker (%s mode, fifo=%v)", mode, b.opts.FIFO)
}
