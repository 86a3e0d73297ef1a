package pubsub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ps "cloud.google.com/go/pubsub/v2"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// MaxMessageSize is the largest message (Message.Size: payload, key,
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
	// DefaultBatchDelay is how long the publisher holds a batch that is
	// not full (DelayThreshold), 1ms rather than the SDK's 10ms: Publish
	// waits for its messages' results, so the delay is added to every
	// Publish of fewer than BatchCount messages (10ms made a caller that
	// publishes one message at a time wait at least 10ms per message, and
	// doubled the publish → handle latency on pstest). 1ms still puts the
	// messages of one Publish call, and of the calls made meanwhile, in one
	// request; full batches go out at once either way.
	DefaultBatchDelay = time.Millisecond
)

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
	// ExactlyOnce gives every subscription the adapter creates or uses
	// exactly-once delivery, and makes Ack wait until the broker confirms
	// it. Subscribers declared AtMostOnce get it whatever this says.
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
	// Defaults DefaultBatchDelay (1ms), 100, 1 MB.
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

// Broker is queuekit's driver for Google Cloud Pub/Sub: wrap it with
// broker.New. Besides the driver contract (Declarer, GroupChecker and As
// included) it has admin methods (EnsureTopic, EnsureSubscription,
// DeleteSubscription, DeleteTopic). It is safe for concurrent use.
type Broker struct {
	client *ps.Client
	opts   Options
	closed atomic.Bool

	mu       sync.Mutex
	topics   map[string]bool // full topic names known to exist
	attempts attempts
}

var (
	_ driver.Broker       = (*Broker)(nil)
	_ driver.Declarer     = (*Broker)(nil)
	_ driver.GroupChecker = (*Broker)(nil)
	_ driver.As           = (*Broker)(nil)
)

// New returns a Broker over client with opts. The client may point at the
// real service or an emulator; New makes no request.
func New(client *ps.Client, opts Options) (*Broker, error) {
	if client == nil {
		return nil, driver.Errorf(semantics.InvalidArgument, "gcppubsub: new", "client is nil")
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
		return opts, driver.Errorf(semantics.InvalidArgument, op, "MaxMessageSize %d is outside 0..%d", opts.MaxMessageSize, MaxMessageSize)
	case opts.AckDeadline < 0, opts.MaxExtension < 0, opts.BatchDelay < 0,
		opts.RetryMinBackoff < 0, opts.RetryMaxBackoff < 0:
		return opts, driver.Errorf(semantics.InvalidArgument, op, "durations must not be negative")
	case opts.MaxOutstandingMessages < 0, opts.MaxOutstandingBytes < 0, opts.Streams < 0,
		opts.BatchCount < 0, opts.BatchBytes < 0:
		return opts, driver.Errorf(semantics.InvalidArgument, op, "counts and sizes must not be negative")
	case opts.AckDeadline != 0 && (opts.AckDeadline < 10*time.Second || opts.AckDeadline > 600*time.Second):
		return opts, driver.Errorf(semantics.InvalidArgument, op, "AckDeadline is %v; Pub/Sub accepts 10s to 600s", opts.AckDeadline)
	case opts.RetryMaxBackoff != 0 && opts.RetryMaxBackoff < opts.RetryMinBackoff:
		return opts, driver.Errorf(semantics.InvalidArgument, op, "RetryMaxBackoff %v is below RetryMinBackoff %v", opts.RetryMaxBackoff, opts.RetryMinBackoff)
	case opts.RetryMinBackoff > 600*time.Second || opts.RetryMaxBackoff > 600*time.Second:
		return opts, driver.Errorf(semantics.InvalidArgument, op, "retry backoffs above 600s are not accepted by Pub/Sub")
	case opts.BatchCount > ps.MaxPublishRequestCount:
		return opts, driver.Errorf(semantics.InvalidArgument, op, "BatchCount %d is over Pub/Sub's %d messages per request", opts.BatchCount, ps.MaxPublishRequestCount)
	case opts.BatchBytes > ps.MaxPublishRequestBytes:
		return opts, driver.Errorf(semantics.InvalidArgument, op, "BatchBytes %d is over Pub/Sub's %d bytes per request", opts.BatchBytes, int(ps.MaxPublishRequestBytes))
	case opts.Streams > maxStreams:
		return opts, driver.Errorf(semantics.InvalidArgument, op, "Streams %d is over %d", opts.Streams, maxStreams)
	case opts.MaxOutstandingMessages > math.MaxInt32:
		return opts, driver.Errorf(semantics.InvalidArgument, op, "MaxOutstandingMessages %d is over %d", opts.MaxOutstandingMessages, math.MaxInt32)
	}
	if opts.Subscription != "" {
		if err := checkID(op, "Subscription", opts.Subscription, "subscriptions"); err != nil {
			return opts, err
		}
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
	if opts.BatchDelay == 0 {
		opts.BatchDelay = DefaultBatchDelay
	}
	if opts.SubscriptionName == nil {
		opts.SubscriptionName = DefaultSubscriptionName
	}
	if opts.MaxMessageSize == 0 {
		opts.MaxMessageSize = MaxMessageSize
	}
	return opts, nil
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

// As sets target, a **pubsub.Client (cloud.google.com/go/pubsub/v2), to
// the client underneath and reports whether it could.
func (b *Broker) As(target any) bool {
	if t, ok := target.(**ps.Client); ok && t != nil {
		*t = b.client
		return true
	}
	return false
}

// Close marks the broker closed and, when it owns the client (Open, or
// Options.CloseClient), closes the client. Package broker closes the
// publishers and subscribers first.
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

// checkID checks a topic or subscription given as an ID or as a full name
// (projects/PROJECT/KIND/ID, kind "topics" or "subscriptions") against
// Pub/Sub's rules for IDs: 3 to 255 characters, a letter first, then
// letters, digits and - _ . ~ + %, and not starting with "goog".
func checkID(op, what, name, kind string) error {
	id := name
	if strings.HasPrefix(name, "projects/") {
		parts := strings.Split(name, "/")
		if len(parts) != 4 || parts[1] == "" || parts[2] != kind {
			return driver.Errorf(semantics.InvalidArgument, op, "%s %q is neither an ID nor a full name projects/PROJECT/%s/ID", what, name, kind)
		}
		id = parts[3]
	}
	var why string
	switch {
	case len(id) < 3 || len(id) > 255:
		why = fmt.Sprintf("is %d characters long; Pub/Sub takes 3 to 255", len(id))
	case !isLetter(id[0]):
		why = "does not start with a letter, as Pub/Sub requires"
	case strings.HasPrefix(id, "goog"):
		why = `starts with "goog", which Pub/Sub reserves`
	default:
		if i := strings.IndexFunc(id, func(r rune) bool { return !idChar(r) }); i >= 0 {
			why = fmt.Sprintf("contains %q; Pub/Sub allows letters, digits and - _ . ~ + %%", id[i:i+1])
		}
	}
	if why != "" {
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q %s", what, name, why)
	}
	return nil
}

// checkGroup checks that group can be part of a subscription ID: the
// characters Pub/Sub allows in IDs (the length is taken care of by
// DefaultSubscriptionName).
func checkGroup(op, group string) error {
	if i := strings.IndexFunc(group, func(r rune) bool { return !idChar(r) }); i >= 0 {
		return driver.Errorf(semantics.InvalidArgument, op,
			"group %q contains %q; it names a Pub/Sub subscription, which allows letters, digits and - _ . ~ + %%", group, group[i:i+1])
	}
	return nil
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func idChar(r rune) bool {
	return r < 0x80 && (isLetter(byte(r)) || r >= '0' && r <= '9' || strings.ContainsRune("-_.~+%", r))
}
