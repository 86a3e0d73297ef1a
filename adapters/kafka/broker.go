package kafka

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Scheme is the URL scheme this package registers: kafka://host:port/.
const Scheme = "kafka"

// Defaults of Options.
const (
	DefaultPartitions      = 3
	DefaultMaxMessageBytes = 1000000
	DefaultCommitInterval  = time.Second
	DefaultDrainTimeout    = 10 * time.Second
	DefaultPrefetch        = 1024
	DefaultDialTimeout     = 10 * time.Second
)

// StartOffset is where a consumer group with no committed offset starts.
type StartOffset int

const (
	// Earliest starts at the oldest retained record (Kafka's
	// auto.offset.reset=earliest), so nothing published before the group
	// first joined is missed. The default.
	Earliest StartOffset = iota
	// Latest starts at the end of each partition.
	Latest
)

// NackStrategy is how Nack(delay) brings a message back. Kafka has no
// per-message nack; see the package documentation for the trade-off.
type NackStrategy int

const (
	// NackPause keeps the message's partition in order: the partition is
	// paused, the nacked record and every later one of that partition wait
	// in memory until the delay has passed, then they are delivered again
	// in offset order. Offsets are never committed past the nacked record,
	// so a crash redelivers it. A long delay holds up its whole partition.
	// The default.
	NackPause NackStrategy = iota
	// NackRetryTopic republishes the nacked message to a retry topic of the
	// group (RetryTopic) with the attempt count and the time it is due in
	// headers, and acknowledges the original: the partition keeps flowing,
	// but a retried message loses its place in the key's order, and the
	// retry topic is written to.
	NackRetryTopic
)

// Options configure a Broker. Brokers (or Client) is required; every other
// zero value means the documented default. Negative durations and counts
// are refused by New (InvalidArgument).
type Options struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string
	// Client, when set, publishes and runs admin requests; the Broker does
	// not close it. Subscribers create their own clients (a Kafka client
	// belongs to at most one group) from Client.Opts() plus ClientOptions.
	Client *kgo.Client
	// ClientOptions are applied after the adapter's own defaults to every
	// client the Broker creates: TLS, SASL, client ID, logging, hooks.
	ClientOptions []kgo.Opt

	// Partitions of the topics the adapter creates; default 3.
	Partitions int
	// ReplicationFactor of the topics the adapter creates; default -1, the
	// broker's default.
	ReplicationFactor int
	// TopicConfigs are set on the topics the adapter creates (for example
	// "retention.ms").
	TopicConfigs map[string]string
	// ManualTopics stops the adapter from creating topics: publishing to,
	// subscribing to or declaring a missing topic then fails (NotFound).
	ManualTopics bool

	// Group is the consumer group of subscribers whose
	// SubscriberOptions.Group is empty or "default" (package broker's
	// default); default "default".
	Group string
	// StartOffset of a group that has no committed offset; default
	// Earliest.
	StartOffset StartOffset
	// Nack strategy; default NackPause.
	Nack NackStrategy
	// RetryTopic names the retry topic of topic and group under
	// NackRetryTopic; default topic + "." + group + ".retry".
	RetryTopic func(topic, group string) string
	// CommitInterval is how often acknowledged offsets are committed;
	// default 1s. A crash redelivers what was acknowledged since.
	CommitInterval time.Duration
	// CommitOnAck makes every Ack return only once an offset commit covers
	// the message (concurrent acks share one commit), for every
	// subscriber. Subscribers declared AtMostOnce get it whatever this
	// says: a crash after their Ack must never redeliver.
	CommitOnAck bool
	// ReadUncommitted also delivers records of transactions that are still
	// open or were aborted; default false (read_committed).
	ReadUncommitted bool
	// DrainTimeout is how long a rebalance waits for the in-flight
	// deliveries of a revoked partition to be settled before giving them
	// up un-committed; default 10s. Keep it below the rebalance timeout.
	DrainTimeout time.Duration
	// Prefetch bounds the deliveries a subscriber holds unsettled when
	// SubscriberOptions.Prefetch is 0; default 1024.
	Prefetch int

	// MaxMessageBytes is the largest message Publish accepts (payload,
	// key, ID and headers, see driver.Message.Size); default 1,000,000,
	// under Kafka's default max.message.bytes.
	MaxMessageBytes int
	// Linger is how long the producer waits to fill a batch; default 0:
	// Publish waits for the broker anyway, and batches form while earlier
	// requests are in flight.
	Linger time.Duration
	// Compression of produced batches; default none, which every Kafka
	// client reads out of the box (kafkajs reads only gzip and none). See
	// the package documentation for the trade-off.
	Compression *kgo.CompressionCodec
	// SessionTimeout of the consumer group; default kgo's 45s.
	SessionTimeout time.Duration
	// DialTimeout bounds connecting at New; default 10s.
	DialTimeout time.Duration
}

// Limits of Options and URL parameters.
const (
	maxPartitions        = 1 << 20
	maxReplication       = 1 << 14
	maxMessageBytesLimit = 1 << 30                          // Kafka's own ceiling on message.max.bytes is about 2 GiB; a batch must fit in an int32
	maxSessionTimeout    = math.MaxInt32 * time.Millisecond // sent as int32 milliseconds
)

// validate refuses options that cannot work, before any I/O.
func (o Options) validate() error {
	const op = "kafka: open"
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if o.Client == nil && len(o.Brokers) == 0 {
		bad("Options.Brokers (or Options.Client) is required")
	}
	for _, h := range o.Brokers {
		if err := checkHostPort(h); err != nil {
			bad("broker %q: %v", h, err)
		}
	}
	switch {
	case o.Partitions < 0 || o.Partitions > maxPartitions:
		bad("Partitions %d is out of range [1, %d] (0 means %d)", o.Partitions, maxPartitions, DefaultPartitions)
	case o.ReplicationFactor < -1 || o.ReplicationFactor > maxReplication:
		bad("ReplicationFactor %d is out of range: -1 (the broker's default) or [1, %d]", o.ReplicationFactor, maxReplication)
	case o.Prefetch < 0:
		bad("Prefetch %d is negative", o.Prefetch)
	case o.MaxMessageBytes < 0 || o.MaxMessageBytes > maxMessageBytesLimit:
		bad("MaxMessageBytes %d is out of range [1, %d]", o.MaxMessageBytes, maxMessageBytesLimit)
	case o.StartOffset != Earliest && o.StartOffset != Latest:
		bad("unknown StartOffset %d", o.StartOffset)
	case o.Nack != NackPause && o.Nack != NackRetryTopic:
		bad("unknown Nack strategy %d", o.Nack)
	case o.SessionTimeout > maxSessionTimeout:
		bad("SessionTimeout %v is too long", o.SessionTimeout)
	}
	for name, d := range map[string]time.Duration{"CommitInterval": o.CommitInterval, "DrainTimeout": o.DrainTimeout,
		"Linger": o.Linger, "SessionTimeout": o.SessionTimeout, "DialTimeout": o.DialTimeout} {
		if d < 0 {
			bad("%s %v is negative", name, d)
		}
	}
	if o.Group != "" {
		if err := checkGroup(op, o.Group); err != nil {
			bad("Group: %v", err)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	return errf(semantics.InvalidArgument, op, "%s", strings.Join(problems, "; "))
}

func (o Options) withDefaults() Options {
	if o.Partitions == 0 {
		o.Partitions = DefaultPartitions
	}
	if o.ReplicationFactor == 0 {
		o.ReplicationFactor = -1
	}
	if o.Group == "" {
		o.Group = "default"
	}
	if o.RetryTopic == nil {
		o.RetryTopic = func(topic, group string) string { return topic + "." + group + ".retry" }
	}
	if o.CommitInterval == 0 {
		o.CommitInterval = DefaultCommitInterval
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.Prefetch == 0 {
		o.Prefetch = DefaultPrefetch
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	return o
}

// Broker is a connection to a Kafka cluster: the adapter's driver.Broker
// (wrap it with broker.New), with Kafka's own operations on top: topic
// admin, consumer lag, partition balance and exactly-once processing. It
// implements driver.Declarer, driver.GroupChecker, driver.BacklogReporter
// and driver.As.
type Broker struct {
	opts      Options
	cl        *kgo.Client // publishes and runs admin requests
	ownClient bool
	adm       *kadm.Client
	seedOpts  []kgo.Opt // seeds (or the given client's options): the base of new clients

	created sync.Map // topic -> struct{}: topics known to exist
	grouped sync.Map // topic -> struct{}: topics known to have a consumer group
	closed  atomic.Bool
}

var (
	_ driver.Broker          = (*Broker)(nil)
	_ driver.Declarer        = (*Broker)(nil)
	_ driver.GroupChecker    = (*Broker)(nil)
	_ driver.BacklogReporter = (*Broker)(nil)
	_ driver.As              = (*Broker)(nil)
)

// New connects to the cluster that opts describe and checks that a broker
// answers within opts.DialTimeout (or ctx's deadline, if sooner). Use it
// through broker.New(b), which adds what every adapter shares.
func New(ctx context.Context, opts Options) (*Broker, error) {
	const op = "kafka: open"
	if err := opts.validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	b := &Broker{opts: opts}
	if opts.Client != nil {
		b.seedOpts = opts.Client.Opts()
		b.cl = opts.Client
	} else {
		b.seedOpts = []kgo.Opt{kgo.SeedBrokers(opts.Brokers...), kgo.DialTimeout(opts.DialTimeout)}
		cl, err := kgo.NewClient(b.producerOpts()...)
		if err != nil {
			return nil, errf(semantics.InvalidArgument, op, "%w", err)
		}
		b.cl, b.ownClient = cl, true
	}
	b.adm = kadm.NewClient(b.cl)

	pctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	pinged := time.Now()
	if err := b.cl.Ping(pctx); err != nil {
		if b.ownClient {
			b.cl.Close()
		}
		kind := semantics.Transient
		if kindOf(err) == semantics.Permanent { // refused credentials, unsupported version
			kind = semantics.Permanent
		}
		// Say how long it really tried: a refused connection fails at once,
		// not after DialTimeout.
		return nil, errf(kind, op, "no Kafka broker at %v accepted a connection (tried for %v of dial_timeout %v; down, unreachable, or refusing the credentials): %w",
			opts.Brokers, time.Since(pinged).Round(time.Millisecond), opts.DialTimeout, err)
	}
	return b, nil
}

// producerOpts are the options of the publishing client: seeds, the
// adapter's producer defaults, then Options.ClientOptions (so they win).
func (b *Broker) producerOpts() []kgo.Opt {
	opts := append(append([]kgo.Opt(nil), b.seedOpts...), b.producerDefaults()...)
	return append(opts, b.opts.ClientOptions...)
}

// producerDefaults are the adapter's producer settings: keys placed by
// murmur2, keyless messages spread round robin (see partitioner), and no
// compression unless Options.Compression asks for it.
func (b *Broker) producerDefaults() []kgo.Opt {
	o := b.opts
	codec := kgo.NoCompression() // kgo's default, snappy, is unreadable by kafkajs
	if o.Compression != nil {
		codec = *o.Compression
	}
	return []kgo.Opt{
		kgo.ProducerLinger(o.Linger),
		kgo.ProducerBatchMaxBytes(int32(o.MaxMessageBytes + 4096)), // room for record and header framing
		kgo.RecordPartitioner(partitioner{}),
		kgo.ProducerBatchCompression(codec),
	}
}

// Client returns the franz-go client the Broker publishes with: the escape
// hatch to everything kgo offers.
func (b *Broker) Client() *kgo.Client { return b.cl }

// Admin returns a kadm client over Client.
func (b *Broker) Admin() *kadm.Client { return b.adm }

// As sets target, a **kgo.Client or a **kadm.Client, to the Broker's
// client (see Client and Admin). broker.Broker.As reaches it, and also
// gives the *Broker itself for a **kafka.Broker.
func (b *Broker) As(target any) bool {
	switch t := target.(type) {
	case **kgo.Client:
		*t = b.cl
	case **kadm.Client:
		*t = b.adm
	default:
		return false
	}
	return true
}

// Capabilities reports what the Kafka adapter guarantees: consumer groups,
// fan-out across groups, per-partition (so per-key) order — not under
// NackRetryTopic, which moves nacked messages behind later ones —,
// redelivery of what a crashed consumer left un-acknowledged, delayed nack,
// attempt count, and dead-lettering after MaxAttempts (done by the adapter,
// not natively).
func (b *Broker) Capabilities() semantics.Capabilities {
	return semantics.Capabilities{
		ConsumerGroups:  true,
		FanOut:          true,
		PerKeyOrdering:  b.opts.Nack == NackPause,
		CrashRedelivery: true,
		DelayedNack:     true,
		AttemptCount:    true,
		DeadLetter:      true,
		MaxMessageSize:  b.opts.MaxMessageBytes,
	}
}

// Close flushes what the publishing client has buffered, waiting no longer
// than ctx, and closes it unless it was passed in Options.Client.
// Publishers and subscribers should be closed first (broker.Broker.Close
// does).
func (b *Broker) Close(ctx context.Context) error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	var err error
	if ferr := b.cl.Flush(ctx); ferr != nil {
		err = driver.WrapError(semantics.Transient, "kafka: close", ferr)
	}
	if b.ownClient {
		b.cl.Close()
	}
	return err
}

// EnsureTopic creates topic with Options.Partitions, ReplicationFactor and
// TopicConfigs unless it exists (or Options.ManualTopics is set). The
// adapter calls it before publishing to or subscribing to a topic for the
// first time.
func (b *Broker) EnsureTopic(ctx context.Context, topic string) error {
	if _, ok := b.created.Load(topic); ok {
		return nil
	}
	if b.opts.ManualTopics {
		return nil
	}
	err := b.CreateTopic(ctx, TopicSpec{Name: topic})
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return err
	}
	b.created.Store(topic, struct{}{})
	return nil
}
