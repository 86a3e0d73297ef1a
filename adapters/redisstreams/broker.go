package redisstreams

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Defaults of Options.
const (
	DefaultShards         = 1
	DefaultAckTimeout     = 30 * time.Second
	DefaultPrefetch       = 1000
	DefaultBatch          = 500
	DefaultBlock          = 2 * time.Second
	DefaultMaxMessageSize = 10 << 20
)

// Limits of Options (and of the URL parameters that set them).
const (
	MaxShards         = 1024
	MaxPrefetch       = 1 << 20
	MaxBatch          = 10000
	MaxMessageSize    = 512 << 20 // Redis's largest string
	MinAckTimeout     = 10 * time.Millisecond
	MinBlock          = time.Millisecond
	MaxBlock          = time.Minute
	MinClaimInterval  = time.Millisecond
	maxDefaultClaim   = time.Second
	minDefaultClaim   = 20 * time.Millisecond
	parkingConsumer   = "qk-returned"
	consumerNameBytes = 4
)

// Options configure a Broker made by New. The zero value is ready to use.
type Options struct {
	// Prefix is put before every key the adapter makes: a topic T is the
	// stream Prefix+T. Default "". It follows the rules of names (no
	// braces, spaces or control characters) and may be empty.
	Prefix string
	// Shards is how many streams a topic the adapter creates is split into
	// (1 to MaxShards, default 1): a message goes to the shard of its key
	// (ShardOf), keyless ones round robin. An existing topic keeps the
	// count it was created with. Under PerKey ordering each shard is
	// consumed by one subscriber of a group at a time, so Shards bounds
	// how many subscribers of a group work at once.
	Shards int
	// MaxLen caps each stream at about MaxLen entries (XADD MAXLEN ~): the
	// oldest entries are trimmed even when a group has not read or acked
	// them, so a cap can lose messages. 0 (the default) means no cap.
	MaxLen int64
	// AckTimeout is how long a delivery may stay unsettled before another
	// consumer of its group claims it, for subscribers that set no
	// SubscriberOptions.AckTimeout. Default DefaultAckTimeout.
	AckTimeout time.Duration
	// Prefetch bounds the deliveries a subscriber holds unsettled, for
	// subscribers that set no SubscriberOptions.Prefetch. Default
	// DefaultPrefetch.
	Prefetch int
	// Batch is the most entries one XREADGROUP or claim asks for
	// (COUNT). Default DefaultBatch.
	Batch int
	// Block is how long one XREADGROUP waits for entries (BLOCK). Closing
	// a subscriber interrupts it on a *redis.Client (unless the client has
	// an OnConnect hook: see the package documentation); on other clients
	// Close may wait that long. Default DefaultBlock.
	Block time.Duration
	// ClaimInterval is how often a subscriber looks for entries to claim
	// (timed out, or due after a nack delay). Default: a quarter of the
	// subscriber's ack timeout, within 20ms and 1s.
	ClaimInterval time.Duration
	// MaxMessageSize is the largest Message.Size Publish accepts. 0 means
	// DefaultMaxMessageSize; at most MaxMessageSize.
	MaxMessageSize int
}

func (o Options) withDefaults() (Options, error) {
	const op = "redisstreams: options"
	if o.Prefix != "" {
		if err := checkName(op, "Options.Prefix", o.Prefix); err != nil {
			return o, err
		}
	}
	if o.Shards == 0 {
		o.Shards = DefaultShards
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.Prefetch == 0 {
		o.Prefetch = DefaultPrefetch
	}
	if o.Batch == 0 {
		o.Batch = DefaultBatch
	}
	if o.Block == 0 {
		o.Block = DefaultBlock
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	switch {
	case o.Shards < 1 || o.Shards > MaxShards:
		return o, invalid(op, "Shards is %d, must be within 1-%d", o.Shards, MaxShards)
	case o.MaxLen < 0:
		return o, invalid(op, "MaxLen is %d, must be >= 0", o.MaxLen)
	case o.AckTimeout < MinAckTimeout:
		return o, invalid(op, "AckTimeout is %v, must be >= %v", o.AckTimeout, MinAckTimeout)
	case o.Prefetch < 1 || o.Prefetch > MaxPrefetch:
		return o, invalid(op, "Prefetch is %d, must be within 1-%d", o.Prefetch, MaxPrefetch)
	case o.Batch < 1 || o.Batch > MaxBatch:
		return o, invalid(op, "Batch is %d, must be within 1-%d", o.Batch, MaxBatch)
	case o.Block < MinBlock || o.Block > MaxBlock:
		return o, invalid(op, "Block is %v, must be within %v-%v", o.Block, MinBlock, MaxBlock)
	case o.ClaimInterval < 0 || (o.ClaimInterval > 0 && o.ClaimInterval < MinClaimInterval):
		return o, invalid(op, "ClaimInterval is %v, must be 0 (derived) or >= %v", o.ClaimInterval, MinClaimInterval)
	case o.MaxMessageSize < 1 || o.MaxMessageSize > MaxMessageSize:
		return o, invalid(op, "MaxMessageSize is %d, must be within 1-%d", o.MaxMessageSize, MaxMessageSize)
	}
	return o, nil
}

// Broker is the adapter's driver over a go-redis client. It implements
// driver.Broker, Declarer, GroupChecker, BacklogReporter and As; wrap it
// with broker.New. It is safe for concurrent use.
type Broker struct {
	client redis.UniversalClient
	own    bool // made by Open: Close closes it
	opts   Options
	maxLen any // opts.MaxLen as an XADD argument

	topicsMu sync.RWMutex
	topics   map[string]*topicKeys // topics whose shard count is known

	closeOnce sync.Once
}

var (
	_ driver.Broker          = (*Broker)(nil)
	_ driver.Declarer        = (*Broker)(nil)
	_ driver.GroupChecker    = (*Broker)(nil)
	_ driver.BacklogReporter = (*Broker)(nil)
	_ driver.As              = (*Broker)(nil)
)

// New returns a Broker over client, which the caller configured (a
// *redis.Client, a failover client, or a *redis.ClusterClient) and keeps
// owning: Close does not close it.
func New(client redis.UniversalClient, opts Options) (*Broker, error) {
	if client == nil {
		return nil, invalid("redisstreams: new", "client is nil")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Broker{client: client, opts: opts, maxLen: strconv.FormatInt(opts.MaxLen, 10), topics: make(map[string]*topicKeys)}, nil
}

// Client returns the go-redis client.
func (b *Broker) Client() redis.UniversalClient { return b.client }

// Options returns the options in effect, defaults filled in.
func (b *Broker) Options() Options { return b.opts }

// As sets target to the go-redis client: *redis.UniversalClient always,
// and *redis.Client or *redis.ClusterClient when the client is one.
func (b *Broker) As(target any) bool {
	switch t := target.(type) {
	case *redis.UniversalClient:
		*t = b.client
		return true
	case **redis.Client:
		c, ok := b.client.(*redis.Client)
		if ok {
			*t = c
		}
		return ok
	case **redis.ClusterClient:
		c, ok := b.client.(*redis.ClusterClient)
		if ok {
			*t = c
		}
		return ok
	}
	return false
}

// Capabilities claims what the conformance suite checks, all of it done by
// the adapter on Redis Streams (dead-lettering included: Redis has none).
func (b *Broker) Capabilities() semantics.Capabilities {
	return semantics.Capabilities{
		ConsumerGroups:    true,
		FanOut:            true,
		PerKeyOrdering:    true,
		CrashRedelivery:   true,
		DelayedNack:       true,
		AttemptCount:      true,
		DeadLetter:        true,
		MaxMessageSize:    b.opts.MaxMessageSize,
		ScheduledDelivery: true,
	}
}

// NewPublisher returns a publisher to any topic.
func (b *Broker) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	return newPublisher(b), nil
}

// NewSubscriber declares opts.Group on opts.Topic (creating the topic's
// streams when needed) and joins it as a new consumer. See the package
// documentation for what AtMostOnce and PerKey do.
func (b *Broker) NewSubscriber(ctx context.Context, opts driver.SubscriberOptions) (driver.Subscriber, error) {
	const op = "redisstreams: subscribe"
	if err := checkName(op, "topic", opts.Topic); err != nil {
		return nil, err
	}
	if err := checkName(op, "group", opts.Group); err != nil {
		return nil, err
	}
	if opts.MaxAttempts > 0 {
		if err := checkName(op, "dead-letter topic", opts.DeadLetterTopic); err != nil {
			return nil, err
		}
	}
	tk, err := b.declare(ctx, op, opts.Topic, []string{opts.Group})
	if err != nil {
		return nil, err
	}
	if err := b.checkOrdering(ctx, op, tk, opts); err != nil {
		return nil, err
	}
	return newSubscriber(b, tk, opts), nil
}

// checkOrdering records the ordering of the group's first subscriber in the
// topic's meta hash and refuses a subscriber that asks for another one: an
// unordered subscriber reads every shard, which would break the order of
// the PerKey subscribers of its group.
func (b *Broker) checkOrdering(ctx context.Context, op string, tk *topicKeys, opts driver.SubscriberOptions) error {
	field := "ordering:" + opts.Group
	want := opts.Ordering.String()
	var got *redis.StringCmd
	_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSetNX(ctx, tk.meta(), field, want)
		got = p.HGet(ctx, tk.meta(), field)
		return nil
	})
	if err != nil {
		return wrap(op, err)
	}
	if have := got.Val(); have != want {
		return driver.Errorf(semantics.Unsupported, op,
			"group %q of topic %q is consumed %s and this subscriber asks for %s: every subscriber of a group must ask for the same ordering "+
				"(to change it, stop the group's subscribers and delete field %q of hash %q)", opts.Group, tk.topic, have, want, field, tk.meta())
	}
	return nil
}

// Declare creates topic's streams (with the broker's Shards when the topic
// is new) and the consumer groups, idempotently. A group receives every
// entry added after it was created; the first groups of a stream also get
// what reached it before (see the package documentation).
func (b *Broker) Declare(ctx context.Context, topic string, groups []string) error {
	const op = "redisstreams: declare"
	if err := checkName(op, "topic", topic); err != nil {
		return err
	}
	for _, g := range groups {
		if err := checkName(op, "group", g); err != nil {
			return err
		}
	}
	_, err := b.declare(ctx, op, topic, groups)
	return err
}

func (b *Broker) declare(ctx context.Context, op, topic string, groups []string) (*topicKeys, error) {
	tk, err := b.resolve(ctx, op, topic)
	if err != nil {
		return nil, err
	}
	if tk == nil {
		tk = newTopicKeys(b.opts.Prefix, topic, b.opts.Shards)
	}
	args := make([]any, len(groups))
	for i, g := range groups {
		args[i] = g
	}
	for range 2 {
		keys := append([]string{tk.meta()}, tk.streams...)
		n, err := declareScript.Run(ctx, b.client, keys, args...).Int()
		if err != nil {
			return nil, wrap(op, err)
		}
		if n == len(tk.streams) {
			b.remember(tk)
			return tk, nil
		}
		tk = newTopicKeys(b.opts.Prefix, topic, n) // created meanwhile with another count
	}
	return nil, driver.Errorf(semantics.Transient, op, "topic %q: its shard count keeps changing", topic)
}

// HasGroup reports whether a group was created on topic (shard 0).
func (b *Broker) HasGroup(ctx context.Context, topic string) (bool, error) {
	const op = "redisstreams: publish"
	if err := checkName(op, "topic", topic); err != nil {
		return false, err
	}
	base := b.opts.Prefix + topic
	res, err := infoScript.Run(ctx, b.client, []string{metaKey(base), base}).Int64Slice()
	if err != nil {
		return false, wrap(op, err)
	}
	if len(res) != 2 {
		return false, driver.Errorf(semantics.Unknown, op, "unexpected reply %v", res)
	}
	if res[0] > 0 {
		b.remember(newTopicKeys(b.opts.Prefix, topic, int(res[0])))
	}
	return res[1] > 0, nil
}

// resolve returns topic's keys when its shard count is known (cached or
// recorded in Redis), or nil.
func (b *Broker) resolve(ctx context.Context, op, topic string) (*topicKeys, error) {
	b.topicsMu.RLock()
	tk := b.topics[topic]
	b.topicsMu.RUnlock()
	if tk != nil {
		return tk, nil
	}
	n, err := b.client.HGet(ctx, metaKey(b.opts.Prefix+topic), "shards").Int()
	switch {
	case err == redis.Nil:
		return nil, nil
	case err != nil:
		return nil, wrap(op, err)
	case n < 1 || n > MaxShards:
		return nil, driver.Errorf(semantics.Permanent, op, "topic %q records %d shards", topic, n)
	}
	tk = newTopicKeys(b.opts.Prefix, topic, n)
	b.remember(tk)
	return tk, nil
}

// publishKeys returns the keys Publish writes to: a topic whose shard count
// is not recorded (made by another client) is one stream.
func (b *Broker) publishKeys(ctx context.Context, op, topic string) (*topicKeys, error) {
	tk, err := b.resolve(ctx, op, topic)
	if tk == nil && err == nil {
		tk = newTopicKeys(b.opts.Prefix, topic, 1)
	}
	return tk, err
}

func (b *Broker) remember(tk *topicKeys) {
	b.topicsMu.Lock()
	b.topics[tk.topic] = tk
	b.topicsMu.Unlock()
}

// Close closes the client when Open made it; a client given to New stays
// open. Closing twice returns nil.
func (b *Broker) Close(ctx context.Context) error {
	var err error
	b.closeOnce.Do(func() {
		if b.own {
			err = wrap("redisstreams: close", b.client.Close())
		}
	})
	return err
}

// String names the broker for logs, without credentials.
func (b *Broker) String() string {
	return fmt.Sprintf("redisstreams(prefix %q)", b.opts.Prefix)
}

// consumerName returns a new consumer name: host, process and a random part.
func consumerName() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "host"
	}
	var r [consumerNameBytes]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("qk-%s-%d-%s", host, os.Getpid(), hex.EncodeToString(r[:]))
}
