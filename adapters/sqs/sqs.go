package sqs

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Scheme is the URL scheme this adapter registers: sqs://.
const Scheme = "sqs"

// Size limits. Publish refuses a message whose broker.Message.Size
// (payload, key, ID and headers) is over Options.MaxMessageSize, whose
// default is DefaultMaxMessageSize in queue mode and
// DefaultFanOutMaxMessageSize in fan-out mode: SNS takes 256 KiB on the
// wire, and a binary payload travels base64-encoded (4/3 of its size), so
// 190 KiB is what always fits. On the wire a message may take up to
// WireLimit in queue mode (queues the adapter creates accept 1 MiB) and
// FanOutWireLimit through SNS; a message whose encoding is over that is
// refused before any request too.
const (
	DefaultMaxMessageSize       = 256 * 1024
	DefaultFanOutMaxMessageSize = 190 * 1024
	WireLimit                   = 1024 * 1024
	FanOutWireLimit             = 256 * 1024
)

// Defaults of the Options fields.
const (
	DefaultWaitTime          = 20 * time.Second
	DefaultVisibilityTimeout = 30 * time.Second
	DefaultMaxMessages       = 10
	DefaultPollers           = 2
	DefaultMaxExtension      = time.Hour
	DefaultRequestTimeout    = 30 * time.Second
)

func init() {
	broker.Register(Scheme, broker.DriverFunc(openURL))
}

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
	// WaitTime is how long one ReceiveMessage long-polls, 0 to 20s;
	// default 20s. Negative means 0: short polling, with a 200ms rest
	// after an empty receive.
	WaitTime time.Duration
	// VisibilityTimeout is how long a received message stays hidden from
	// other consumers, in whole seconds (rounded up), unless
	// SubscriberOptions.AckTimeout says otherwise; default 30s.
	VisibilityTimeout time.Duration
	// MaxMessages is the most messages one ReceiveMessage asks for, 1 to
	// 10; default 10.
	MaxMessages int
	// Pollers is how many ReceiveMessage calls each subscriber keeps
	// running at once; default 2.
	Pollers int
	// MaxExtension bounds the automatic visibility extension: a delivery
	// held unsettled longer than this is no longer extended (nor counted
	// against Prefetch) and the queue redelivers it. Default 1h.
	MaxExtension time.Duration
	// MaxMessageSize is the largest message Publish sends, by
	// broker.Message.Size; default DefaultMaxMessageSize (256 KiB), or
	// DefaultFanOutMaxMessageSize (190 KiB) in fan-out mode. At most
	// WireLimit (FanOutWireLimit in fan-out mode).
	MaxMessageSize int
	// NoCreate stops the broker from creating missing queues, topics and
	// subscriptions; they must exist and a missing one is a NotFound error.
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
	case o.WaitTime > 20*time.Second:
		return o, broker.Errorf(semantics.InvalidArgument, op, "WaitTime %v is over the SQS maximum of 20s", o.WaitTime)
	case o.VisibilityTimeout < 0 || o.VisibilityTimeout > 12*time.Hour:
		return o, broker.Errorf(semantics.InvalidArgument, op, "VisibilityTimeout %v is not within 0-12h", o.VisibilityTimeout)
	case o.MaxMessages < 1 || o.MaxMessages > 10:
		return o, broker.Errorf(semantics.InvalidArgument, op, "MaxMessages %d is not within 1-10", o.MaxMessages)
	case o.Pollers < 1:
		return o, broker.Errorf(semantics.InvalidArgument, op, "Pollers %d must be at least 1", o.Pollers)
	case o.MaxMessageSize < 1 || o.MaxMessageSize > wire:
		return o, broker.Errorf(semantics.InvalidArgument, op, "MaxMessageSize %d is not within 1-%d", o.MaxMessageSize, wire)
	case o.MaxExtension < 0 || o.RequestTimeout < 0:
		return o, broker.Errorf(semantics.InvalidArgument, op, "MaxExtension and RequestTimeout must not be negative")
	}
	return o, nil
}

// Broker is a connection to SQS (and SNS in fan-out mode). It implements
// broker.Broker and adds the SQS tools: EnsureQueue, Redrive and Depth.
type Broker struct {
	client *awssqs.Client
	sns    *sns.Client
	opts   Options
	closed atomic.Bool

	mu      sync.Mutex
	urls    map[string]string // queue name -> URL
	arns    map[string]string // queue URL -> ARN
	topics  map[string]string // SNS topic name -> ARN
	senders map[string]*batcher[*encoded]
}

// New returns a Broker over an SQS client the caller configured (and an
// SNS client in opts.SNS for fan-out). Closing the Broker does not close
// the clients.
func New(client *awssqs.Client, opts Options) (*Broker, error) {
	if client == nil {
		return nil, broker.Errorf(semantics.InvalidArgument, "sqs: new", "the SQS client is nil")
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

// URL parameters of sqs://, all optional.
var urlParams = []string{"region", "endpoint", "fifo", "fanout", "wait_time", "visibility_timeout",
	"max_messages", "pollers", "max_extension", "max_message_size", "create"}

// openURL opens sqs://?params; see the package documentation.
func openURL(ctx context.Context, u *url.URL) (broker.Broker, error) {
	const op = "sqs: open"
	if u.Host != "" || strings.Trim(u.Path, "/") != "" || u.User != nil {
		return nil, broker.Errorf(semantics.InvalidArgument, op,
			"sqs:// takes no host or path (got %q): name the queue as the topic in Publish and SubscriberOptions (a queue name or queue URL), and the endpoint with ?endpoint=", u.Redacted())
	}
	p := broker.NewParams(Scheme, u, urlParams...)
	region := p.String("region", "")
	endpoint := p.String("endpoint", "")
	fanout := p.Bool("fanout", false)
	opts := Options{
		FIFO:              p.Bool("fifo", false),
		WaitTime:          p.Duration("wait_time", DefaultWaitTime),
		VisibilityTimeout: p.Duration("visibility_timeout", DefaultVisibilityTimeout),
		MaxMessages:       p.Int("max_messages", DefaultMaxMessages),
		Pollers:           p.Int("pollers", DefaultPollers),
		MaxExtension:      p.Duration("max_extension", DefaultMaxExtension),
		MaxMessageSize:    p.Int("max_message_size", 0),
		NoCreate:          !p.Bool("create", true),
	}
	if p.Duration("wait_time", DefaultWaitTime) == 0 {
		opts.WaitTime = -1 // explicit 0: short polling
	}
	if endpoint != "" {
		if eu, err := url.Parse(endpoint); err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			p.Fail("parameter endpoint=%q is not an http(s) URL", endpoint)
		}
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	cfg, err := loadConfig(ctx, region, endpoint)
	if err != nil {
		return nil, err
	}
	sqsClient := awssqs.NewFromConfig(cfg)
	if fanout {
		opts.SNS = sns.NewFromConfig(cfg)
	}
	return New(sqsClient, opts)
}

// loadConfig builds the AWS configuration of a URL-opened broker: the
// default credential chain and region, or static placeholder credentials
// (and region us-east-1 unless region is set) for an emulator endpoint.
// The SDK's own retries are off: queuekit's callers decide about retrying.
func loadConfig(ctx context.Context, region, endpoint string) (aws.Config, error) {
	const op = "sqs: open"
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = 5 * time.Second }).
		WithTransportOptions(func(t *http.Transport) { t.MaxIdleConnsPerHost = 64 })
	loads := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if region != "" {
		loads = append(loads, config.WithRegion(region))
	}
	if endpoint != "" {
		if region == "" {
			loads = append(loads, config.WithRegion("us-east-1"))
		}
		loads = append(loads,
			config.WithBaseEndpoint(endpoint),
			config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("queuekit", "queuekit", "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loads...)
	if err != nil {
		return aws.Config{}, broker.WrapError(semantics.InvalidArgument, op, err)
	}
	if cfg.Region == "" {
		return aws.Config{}, broker.Errorf(semantics.InvalidArgument, op, "no AWS region: add ?region= to the URL or set AWS_REGION")
	}
	return cfg, nil
}

// Client returns the SQS client the broker uses: the escape hatch to the
// SDK.
func (b *Broker) Client() *awssqs.Client { return b.client }

// SNSClient returns the SNS client of a fan-out broker, or nil.
func (b *Broker) SNSClient() *sns.Client { return b.sns }

// Options returns the broker's options with defaults filled in.
func (b *Broker) Options() Options { return b.opts }

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
	}
}

// Close marks the broker closed: new publishers and subscribers are
// refused. It does not close the SDK clients, which hold no connections
// that need closing.
func (b *Broker) Close(ctx context.Context) error {
	b.closed.Store(true)
	return nil
}

func (b *Broker) checkOpen(op string) error {
	if b.closed.Load() {
		return broker.WrapError(semantics.Closed, op, broker.ErrClosed)
	}
	return nil
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
		return "", broker.Errorf(semantics.Permanent, "sqs: queue attributes", "no QueueArn for %s", queueURL)
	}
	b.mu.Lock()
	b.arns[queueURL] = a
	b.mu.Unlock()
	return a, nil
}

// topicARN returns the ARN of SNS topic name (a name or an ARN), creating
// it when it is missing and creation is allowed.
func (b *Broker) topicARN(ctx context.Context, name string) (string, error) {
	if isTopicARN(name) {
		return name, nil
	}
	b.mu.Lock()
	a, ok := b.topics[name]
	b.mu.Unlock()
	if ok {
		return a, nil
	}
	var err error
	if b.opts.NoCreate {
		a, err = b.findTopic(ctx, name)
	} else {
		// CreateTopic is idempotent: it returns the ARN of an existing topic.
		in := &sns.CreateTopicInput{Name: aws.String(name)}
		if strings.HasSuffix(name, fifoSuffix) {
			in.Attributes = map[string]string{"FifoTopic": "true"}
		}
		var out *sns.CreateTopicOutput
		out, err = b.sns.CreateTopic(ctx, in)
		if err == nil {
			a = aws.ToString(out.TopicArn)
		}
		err = wrap("sqs: create SNS topic "+name, err)
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
	return "", broker.Errorf(semantics.NotFound, "sqs: SNS topic", "topic %s does not exist (and the broker was opened with create=false)", name)
}

// forget drops cached names after a NotFound, so that the next call looks
// again (and creates, where allowed).
func (b *Broker) forget(name string) {
	b.mu.Lock()
	delete(b.urls, name)
	delete(b.topics, name)
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
