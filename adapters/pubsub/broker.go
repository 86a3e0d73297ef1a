package pubsub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ps "cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Scheme is the URL scheme this adapter registers: gcppubsub://PROJECT?params.
const Scheme = "gcppubsub"

// MaxMessageSize is the largest message (broker.Message.Size: payload, key,
// ID and headers) that Publish accepts. Pub/Sub takes 10 MB (10,000,000
// bytes) per publish request; 4 KiB of it is kept for what the adapter adds
// (the ID and publish-time attributes, the topic name and protobuf framing).
const MaxMessageSize = 10_000_000 - 4096

// Pub/Sub's own limits on attributes and ordering keys, checked before any
// request so that a message never fails half-way through a batch.
const (
	maxAttributes     = 100
	maxAttrKeyBytes   = 256
	maxAttrValueBytes = 1024
	maxOrderingKey    = 1024
)

// Defaults used when Options (or URL parameters) leave a value unset.
const (
	// DefaultAckDeadline is the ack deadline of created subscriptions and
	// the length of each lease extension.
	DefaultAckDeadline = 10 * time.Second
	// DefaultMaxOutstandingMessages bounds the deliveries a subscriber
	// holds unsettled.
	DefaultMaxOutstandingMessages = 1000
	// DefaultDialTimeout bounds Open's reachability check.
	DefaultDialTimeout = 10 * time.Second
)

func init() { broker.Register(Scheme, broker.DriverFunc(open)) }

// Options configure a Broker made by New. The zero value is the default:
// ordering on, topics and subscriptions created when absent, SDK batching and
// flow-control defaults.
type Options struct {
	// DisableOrdering stops using Message.Key as the Pub/Sub ordering key.
	// Keys are then carried in the "queuekit-key" attribute and no
	// per-key order is kept (Capabilities().PerKeyOrdering is false).
	DisableOrdering bool
	// DisableCreate makes the adapter use existing topics and subscriptions
	// only; a missing one is a NotFound error.
	DisableCreate bool
	// ExactlyOnce creates subscriptions with exactly-once delivery, and
	// makes Ack wait until the broker confirms it.
	ExactlyOnce bool
	// AckDeadline of the subscriptions the adapter creates, when
	// SubscriberOptions.AckTimeout is 0. Default 10s; Pub/Sub accepts
	// 10s..600s.
	AckDeadline time.Duration
	// MaxExtension is how long the client keeps extending the lease of a
	// delivery that is not settled yet. Default 60m (the SDK's).
	MaxExtension time.Duration
	// MaxOutstandingMessages bounds the deliveries a subscriber holds
	// unsettled (SubscriberOptions.Prefetch overrides it). Default 1000.
	MaxOutstandingMessages int
	// MaxOutstandingBytes bounds their payload bytes. Default 1 GB.
	MaxOutstandingBytes int
	// Streams is the number of StreamingPull streams per subscriber.
	// Default 1.
	Streams int
	// BatchDelay, BatchCount and BatchBytes tune the publisher's batching
	// (ps.PublishSettings DelayThreshold, CountThreshold, ByteThreshold).
	// Defaults 10ms, 100, 1 MB.
	BatchDelay time.Duration
	BatchCount int
	BatchBytes int
	// RetryMinBackoff and RetryMaxBackoff set the RetryPolicy of the
	// subscriptions the adapter creates: the broker waits between them
	// (growing exponentially) before redelivering a nacked message. Zero:
	// no retry policy (redelivery at once).
	RetryMinBackoff time.Duration
	RetryMaxBackoff time.Duration
	// Subscription, when set, is the subscription ID every subscriber of
	// this broker uses, whatever its Group; it must belong to the topic
	// subscribed to.
	Subscription string
	// SubscriptionName derives the subscription ID of a topic and group.
	// Default: DefaultSubscriptionName.
	SubscriptionName func(topic, group string) string
	// MaxMessageSize lowers the size limit Publish enforces (and
	// Capabilities reports) for servers that accept less than Pub/Sub's
	// 10 MB; pstest takes 4 MiB per request. Default MaxMessageSize.
	MaxMessageSize int
	// CloseClient makes Close close the *pubsub.Client too. Open sets it;
	// with New the caller owns the client.
	CloseClient bool
}

// Broker is a queuekit broker over Google Cloud Pub/Sub. It implements
// broker.Broker and is safe for concurrent use.
type Broker struct {
	client *ps.Client
	opts   Options
	closed atomic.Bool

	mu       sync.Mutex
	topics   map[string]bool // full topic names known to exist
	attempts attempts
}

var _ broker.Broker = (*Broker)(nil)

// New returns a Broker over client with opts. The client may point at the
// real service or an emulator; New makes no request.
func New(client *ps.Client, opts Options) (*Broker, error) {
	if client == nil {
		return nil, broker.Errorf(semantics.InvalidArgument, "gcppubsub: new", "client is nil")
	}
	opts, err := opts.withDefaults("gcppubsub: new")
	if err != nil {
		return nil, err
	}
	return &Broker{client: client, opts: opts, topics: map[string]bool{}}, nil
}

// withDefaults validates opts and fills in their defaults.
func (opts Options) withDefaults(op string) (Options, error) {
	switch {
	case opts.MaxMessageSize < 0 || opts.MaxMessageSize > MaxMessageSize:
		return opts, broker.Errorf(semantics.InvalidArgument, op, "MaxMessageSize %d is outside 0..%d", opts.MaxMessageSize, MaxMessageSize)
	case opts.AckDeadline < 0, opts.MaxExtension < 0, opts.BatchDelay < 0,
		opts.RetryMinBackoff < 0, opts.RetryMaxBackoff < 0:
		return opts, broker.Errorf(semantics.InvalidArgument, op, "durations must not be negative")
	case opts.MaxOutstandingMessages < 0, opts.MaxOutstandingBytes < 0, opts.Streams < 0,
		opts.BatchCount < 0, opts.BatchBytes < 0:
		return opts, broker.Errorf(semantics.InvalidArgument, op, "counts and sizes must not be negative")
	case opts.AckDeadline != 0 && (opts.AckDeadline < 10*time.Second || opts.AckDeadline > 600*time.Second):
		return opts, broker.Errorf(semantics.InvalidArgument, op, "AckDeadline is %v; Pub/Sub accepts 10s to 600s", opts.AckDeadline)
	case opts.RetryMaxBackoff != 0 && opts.RetryMaxBackoff < opts.RetryMinBackoff:
		return opts, broker.Errorf(semantics.InvalidArgument, op, "RetryMaxBackoff %v is below RetryMinBackoff %v", opts.RetryMaxBackoff, opts.RetryMinBackoff)
	case opts.RetryMinBackoff > 600*time.Second || opts.RetryMaxBackoff > 600*time.Second:
		return opts, broker.Errorf(semantics.InvalidArgument, op, "retry backoffs above 600s are not accepted by Pub/Sub")
	case opts.BatchCount > ps.MaxPublishRequestCount:
		return opts, broker.Errorf(semantics.InvalidArgument, op, "BatchCount %d is over Pub/Sub's %d messages per request", opts.BatchCount, ps.MaxPublishRequestCount)
	}
	if opts.AckDeadline == 0 {
		opts.AckDeadline = DefaultAckDeadline
	}
	if opts.MaxOutstandingMessages == 0 {
		opts.MaxOutstandingMessages = DefaultMaxOutstandingMessages
	}
	if opts.Streams == 0 {
		opts.Streams = 1
	}
	if opts.SubscriptionName == nil {
		opts.SubscriptionName = DefaultSubscriptionName
	}
	if opts.MaxMessageSize == 0 {
		opts.MaxMessageSize = MaxMessageSize
	}
	return opts, nil
}

// open is the gcppubsub:// driver.
func open(ctx context.Context, u *url.URL) (broker.Broker, error) {
	const op = "gcppubsub: open"
	project := u.Host
	switch {
	case u.User != nil:
		return nil, broker.Errorf(semantics.InvalidArgument, op,
			"gcppubsub URLs carry no credentials (got %s): use Application Default Credentials, or New with a configured client", u.Redacted())
	case project == "" || u.Port() != "" || (u.Path != "" && u.Path != "/"):
		return nil, broker.Errorf(semantics.InvalidArgument, op,
			"want gcppubsub://PROJECT?params, got %s (the project ID is the host part)", u.Redacted())
	}
	p := broker.NewParams(Scheme, u, "emulator", "ordering", "create", "exactly_once", "ack_deadline",
		"max_extension", "max_outstanding_messages", "max_outstanding_bytes", "streams",
		"batch_delay", "batch_count", "batch_bytes", "retry_min_backoff", "retry_max_backoff",
		"subscription", "dial_timeout", "max_message_size")
	emulator := p.String("emulator", "")
	opts := Options{
		DisableOrdering:        !p.Bool("ordering", true),
		DisableCreate:          !p.Bool("create", true),
		ExactlyOnce:            p.Bool("exactly_once", false),
		AckDeadline:            p.Duration("ack_deadline", 0),
		MaxExtension:           p.Duration("max_extension", 0),
		MaxOutstandingMessages: p.Int("max_outstanding_messages", 0),
		MaxOutstandingBytes:    p.Int("max_outstanding_bytes", 0),
		Streams:                p.Int("streams", 0),
		BatchDelay:             p.Duration("batch_delay", 0),
		BatchCount:             p.Int("batch_count", 0),
		BatchBytes:             p.Int("batch_bytes", 0),
		RetryMinBackoff:        p.Duration("retry_min_backoff", 0),
		RetryMaxBackoff:        p.Duration("retry_max_backoff", 0),
		Subscription:           p.String("subscription", ""),
		MaxMessageSize:         p.Int("max_message_size", 0),
		CloseClient:            true,
	}
	dialTimeout := p.Duration("dial_timeout", DefaultDialTimeout)
	if dialTimeout <= 0 {
		p.Fail("parameter dial_timeout must be positive")
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if _, err := opts.withDefaults(op); err != nil {
		return nil, err
	}
	var copts []option.ClientOption
	where := "the Pub/Sub service"
	if env := os.Getenv("PUBSUB_EMULATOR_HOST"); env != "" {
		where = "the Pub/Sub emulator at PUBSUB_EMULATOR_HOST=" + env
	}
	if emulator != "" {
		where = "the Pub/Sub emulator at " + emulator
		copts = append(copts,
			option.WithEndpoint(emulator),
			option.WithoutAuthentication(),
			option.WithTelemetryDisabled(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	}
	client, err := ps.NewClient(ctx, project, copts...)
	if err != nil {
		return nil, wrap(op, err)
	}
	b, err := New(client, opts)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	if err := b.ping(ctx, dialTimeout); err != nil {
		_ = client.Close()
		return nil, broker.Errorf(broker.KindOf(err), op, "cannot reach %s within %v: %w", where, dialTimeout, err)
	}
	return b, nil
}

// ping makes one cheap request, so that Open fails fast with a clear error
// when the service is unreachable instead of on first use. Any answer from
// the service (even not found or permission denied) proves it is there.
func (b *Broker) ping(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := b.client.TopicAdminClient.GetTopic(ctx, &pb.GetTopicRequest{Topic: b.topicName("queuekit-ping")})
	if err == nil || isCode(err, codes.NotFound) || isCode(err, codes.PermissionDenied) {
		return nil
	}
	return broker.WrapError(semantics.Transient, "", err)
}

// Client returns the underlying Pub/Sub client, the escape hatch to
// everything the adapter does not wrap.
func (b *Broker) Client() *ps.Client { return b.client }

// Capabilities: consumer groups (subscriptions), fan-out, per-key ordering
// (unless DisableOrdering), crash redelivery (lease expiry), delayed nack,
// attempt count, and native dead-lettering (DeadLetterPolicy).
func (b *Broker) Capabilities() semantics.Capabilities {
	return semantics.Capabilities{
		ConsumerGroups:   true,
		FanOut:           true,
		PerKeyOrdering:   !b.opts.DisableOrdering,
		CrashRedelivery:  true,
		DelayedNack:      true,
		AttemptCount:     true,
		DeadLetter:       true,
		NativeDeadLetter: true,
		MaxMessageSize:   b.opts.MaxMessageSize,
	}
}

// Close marks the broker closed and, when it owns the client (Open, or
// Options.CloseClient), closes the client. Close publishers and subscribers
// first.
func (b *Broker) Close(ctx context.Context) error {
	if b.closed.Swap(true) || !b.opts.CloseClient {
		return nil
	}
	return wrap("gcppubsub: close", b.client.Close())
}

// DefaultSubscriptionName is the subscription ID of group on topic:
// "<topic>-<group>" (topic given as an ID or a full name). IDs over Pub/Sub's
// 255 characters are shortened with a hash suffix.
func DefaultSubscriptionName(topic, group string) string {
	name := lastSegment(topic) + "-" + group
	if len(name) <= 255 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:255-17] + "-" + hex.EncodeToString(sum[:8])
}

// topicName returns the full name projects/P/topics/T of a topic ID or name.
func (b *Broker) topicName(topic string) string {
	if strings.HasPrefix(topic, "projects/") {
		return topic
	}
	return "projects/" + b.client.Project() + "/topics/" + topic
}

// subscriptionPath returns projects/P/subscriptions/S of an ID or name.
func (b *Broker) subscriptionPath(sub string) string {
	if strings.HasPrefix(sub, "projects/") {
		return sub
	}
	return "projects/" + b.client.Project() + "/subscriptions/" + sub
}

func lastSegment(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}
