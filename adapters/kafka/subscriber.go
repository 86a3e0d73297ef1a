package kafka

import (
	"context"
	"errors"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

var validGroup = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)

// Subscriber consumes one topic in one consumer group. It implements
// driver.Subscriber and driver.BatchReceiver; see the package documentation
// for its commit, rebalance and nack behaviour.
type Subscriber struct {
	b          *Broker
	opts       driver.SubscriberOptions
	cl         *kgo.Client
	retryTopic string // "" unless NackRetryTopic
	prefetch   int64  // most deliveries outstanding
	lowWater   int64  // the poller waits for outstanding to fall to this before fetching more
	ackTimeout time.Duration
	commitAck  bool
	topicIDs   map[[16]byte]string // of the consumed topics, for OffsetFetch v10+

	ctx    context.Context // canceled by Close: stops the poller, committer and sweeper
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex // guards the fields below and every partition's hold state
	ready    []*delivery
	head     int
	parts    map[topicPart]*partition
	fetchErr error
	closed   bool

	backlog     []fetched     // polled records not yet delivered, in poll order
	filling     bool          // a receiver is turning the backlog into deliveries
	cut         []fetched     // the filling receiver's scratch
	runs        [][]delivery  // the filling receiver's scratch
	chunk       []delivery    // room for the next deliveries; the filling receiver's own
	strs        strArena      // keys and IDs of fetched records; the filling receiver's own
	notify      chan struct{} // cap 1: deliveries became ready
	room        chan struct{} // cap 1: the backlog is used up, or outstanding fell to lowWater
	kick        chan struct{} // cap 1: commit now (CommitOnAck)
	outstanding atomic.Int64  // deliveries attached and not finally settled

	commitMu  sync.Mutex // one commit at a time
	closeOnce sync.Once
	closeErr  error
}

var (
	_ driver.Subscriber    = (*Subscriber)(nil)
	_ driver.BatchReceiver = (*Subscriber)(nil)
)

type topicPart struct {
	topic string
	part  int32
}

// NewSubscriber joins consumer group opts.Group on opts.Topic (the group
// of Options.Group when opts.Group is empty or "default"), creating the
// topic — and the dead-letter and retry topics it needs — unless
// Options.ManualTopics is set, and declaring the group (see Declare) so
// that every message published after NewSubscriber returns reaches it.
//
// Per-key ordering is refused (Unsupported) under NackRetryTopic, which
// moves a nacked message behind the later ones of its key.
func (b *Broker) NewSubscriber(ctx context.Context, opts driver.SubscriberOptions) (driver.Subscriber, error) {
	s, err := b.Subscribe(ctx, opts)
	if err != nil {
		return nil, err // never a typed nil in the interface
	}
	return s, nil
}

// Subscribe is NewSubscriber returning the concrete type, for code that
// drives the adapter without package broker. Options it leaves empty get
// package broker's defaults (group, dead-letter topic).
func (b *Broker) Subscribe(ctx context.Context, opts driver.SubscriberOptions) (*Subscriber, error) {
	const op = "kafka: subscribe"
	if b.closed.Load() {
		return nil, driver.ErrClosed
	}
	if opts.Group == "" || opts.Group == "default" {
		opts.Group = b.opts.Group
	}
	if opts.DeadLetterTopic == "" {
		opts.DeadLetterTopic = driver.DeadLetterTopic(opts.Topic)
	}
	if err := checkTopic(op, opts.Topic); err != nil {
		return nil, err
	}
	if err := checkGroup(op, opts.Group); err != nil {
		return nil, err
	}
	if opts.MaxAttempts > 0 {
		if err := checkTopic(op, opts.DeadLetterTopic); err != nil {
			return nil, errf(semantics.InvalidArgument, op, "dead-letter topic: %w", err)
		}
	}
	if opts.Ordering == semantics.PerKey && b.opts.Nack == NackRetryTopic {
		return nil, errf(semantics.Unsupported, op, "per-key ordering needs the pause Nack strategy (URL nack=pause, Options.Nack NackPause): retry-topic moves a nacked message behind the later messages of its key")
	}
	s := &Subscriber{
		b:          b,
		opts:       opts,
		prefetch:   int64(b.opts.Prefetch),
		ackTimeout: opts.AckTimeout,
		commitAck:  b.opts.CommitOnAck || opts.Guarantee == semantics.AtMostOnce, // an ack must survive a crash
		parts:      map[topicPart]*partition{},
		notify:     make(chan struct{}, 1),
		room:       make(chan struct{}, 1),
		kick:       make(chan struct{}, 1),
	}
	if opts.Prefetch > 0 {
		s.prefetch = int64(opts.Prefetch)
	}
	s.lowWater = s.prefetch - max(s.prefetch/4, 1) // fetch in chunks, not one by one
	topics := []string{opts.Topic}
	if b.opts.Nack == NackRetryTopic {
		if !validGroup.MatchString(opts.Group) {
			return nil, errf(semantics.InvalidArgument, op, "group %q cannot name a retry topic: use letters, digits, '.', '_' and '-'", opts.Group)
		}
		s.retryTopic = b.opts.RetryTopic(opts.Topic, opts.Group)
		if err := checkTopic(op, s.retryTopic); err != nil {
			return nil, errf(semantics.InvalidArgument, op, "retry topic of group %s: %w", opts.Group, err)
		}
		topics = append(topics, s.retryTopic)
	}
	if err := b.ensureTopics(ctx, topics...); err != nil {
		return nil, wrap(op, err)
	}
	listed, err := b.adm.ListTopics(ctx, topics...)
	if err != nil {
		return nil, wrap(op, err)
	}
	s.topicIDs = map[[16]byte]string{}
	for _, d := range listed {
		s.topicIDs[d.ID] = d.Topic
	}
	if opts.MaxAttempts > 0 {
		if err := b.ensureTopics(ctx, opts.DeadLetterTopic); err != nil {
			return nil, wrap(op, err)
		}
	}
	for _, t := range topics {
		if err := b.declareGroup(ctx, t, opts.Group); err != nil {
			return nil, wrap(op, err)
		}
	}
	b.grouped.Store(opts.Topic, struct{}{})

	kopts := append(append([]kgo.Opt(nil), b.seedOpts...), b.producerDefaults()...)
	kopts = append(kopts, b.consumerDefaults()...)
	kopts = append(kopts,
		kgo.ConsumerGroup(opts.Group),
		kgo.ConsumeTopics(topics...),
		kgo.DisableAutoCommit(),
		kgo.OnPartitionsAssigned(s.onAssigned),
		kgo.OnPartitionsRevoked(s.onRevoked),
		kgo.OnPartitionsLost(s.onLost),
		kgo.OnOffsetsFetched(s.onFetched),
	)
	kopts = append(kopts, b.opts.ClientOptions...)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, errf(semantics.InvalidArgument, op, "%w", err)
	}
	s.cl = cl
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(2)
	go s.poll()
	go s.committer()
	if s.ackTimeout > 0 {
		s.wg.Add(1)
		go s.sweeper()
	}
	return s, nil
}

// consumerDefaults are the adapter's consumer settings: where a group
// without commits starts, isolation, fetch wait, heartbeat, session timeout,
// and rebalances only between polls.
func (b *Broker) consumerDefaults() []kgo.Opt {
	start := kgo.NewOffset().AtStart()
	if b.opts.StartOffset == Latest {
		start = kgo.NewOffset().AtEnd()
	}
	isolation := kgo.ReadCommitted()
	if b.opts.ReadUncommitted {
		isolation = kgo.ReadUncommitted()
	}
	opts := []kgo.Opt{
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(start),
		kgo.FetchIsolationLevel(isolation),
		kgo.FetchMaxWait(500 * time.Millisecond),
		kgo.HeartbeatInterval(time.Second),
	}
	if b.opts.SessionTimeout > 0 {
		opts = append(opts, kgo.SessionTimeout(b.opts.SessionTimeout))
	}
	return opts
}

// ensureTopics makes sure topics exist: created when missing, or NotFound
// under ManualTopics.
func (b *Broker) ensureTopics(ctx context.Context, topics ...string) error {
	if b.opts.ManualTopics {
		listed, err := b.adm.ListTopics(ctx, topics...)
		if err != nil {
			return err
		}
		for _, t := range topics {
			if d, ok := listed[t]; !ok || d.Err != nil {
				return errf(semantics.NotFound, "kafka", "topic %s does not exist (ManualTopics is set)", t)
			}
		}
		return nil
	}
	for _, t := range topics {
		if err := b.EnsureTopic(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

// Client returns the subscriber's franz-go client (the escape hatch).
func (s *Subscriber) Client() *kgo.Client { return s.cl }

// As sets a **kgo.Client target to the subscriber's client.
func (s *Subscriber) As(target any) bool {
	if t, ok := target.(**kgo.Client); ok {
		*t = s.cl
		return true
	}
	return false
}

// Receive returns the next delivery.
func (s *Subscriber) Receive(ctx context.Context) (driver.Delivery, error) {
	var buf [1]driver.Delivery
	if _, err := s.ReceiveBatch(ctx, buf[:]); err != nil {
		return nil, err
	}
	return buf[0], nil
}

// ReceiveBatch blocks until a delivery is ready, then fills buf with as many
// as are ready, in offset order per partition. When none is ready it turns
// records the poller fetched into deliveries itself (see fillLocked).
func (s *Subscriber) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	for {
		if s.head == len(s.ready) && !s.filling && len(s.backlog) > 0 && !s.closed {
			if room := s.prefetch - s.outstanding.Load(); room > 0 {
				if n := s.fillLocked(int(min(room, int64(max(len(buf), fillMin)))), buf); n > 0 {
					if s.head < len(s.ready) || len(s.backlog) > 0 {
						s.signal() // more for another receiver
					}
					s.mu.Unlock()
					return n, nil
				}
			}
		}
		if avail := len(s.ready) - s.head; avail > 0 {
			n := min(avail, len(buf))
			now := time.Now().UnixNano()
			for i := 0; i < n; i++ {
				d := s.ready[s.head+i]
				s.ready[s.head+i] = nil
				d.handed.Store(now)
				buf[i] = d
			}
			s.head += n
			if s.head == len(s.ready) {
				s.ready, s.head = s.ready[:0], 0
				if len(s.backlog) > 0 {
					s.signal() // another receiver may fill
				}
			} else {
				s.signal() // more for another receiver (the taken head is reclaimed by appendReady)
			}
			s.mu.Unlock()
			return n, nil
		}
		if s.closed {
			s.mu.Unlock()
			return 0, driver.ErrClosed
		}
		if err := s.fetchErr; err != nil {
			s.fetchErr = nil
			s.mu.Unlock()
			return 0, err
		}
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-s.ctx.Done():
		case <-ctx.Done():
			return 0, driver.WrapError(semantics.Transient, "kafka: receive", ctx.Err())
		}
		s.mu.Lock()
	}
}

// fillMin is the fewest records a receiver decodes at a time (when the
// prefetch bound leaves room): what its buf has no room for waits ready
// for the next call. A larger buf is filled whole, straight from the
// backlog.
const fillMin = 16

// appendReady queues ds for receivers. The slots receivers already took
// are reclaimed only when the queue would otherwise grow, so that a receiver
// taking a few deliveries at a time never copies the rest along. s.mu held.
func (s *Subscriber) appendReady(ds ...*delivery) {
	if s.head > 0 && len(s.ready)+len(ds) > cap(s.ready) {
		k := copy(s.ready, s.ready[s.head:])
		clear(s.ready[k:])
		s.ready, s.head = s.ready[:k], 0
	}
	s.ready = append(s.ready, ds...)
}

// signal wakes a receiver; s.mu held or not.
func (s *Subscriber) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// release subtracts n settled deliveries from the outstanding count, wakes
// the poller when it falls to the low-water mark, and a receiver when it
// falls below the prefetch bound (receivers fill no deliveries past it).
func (s *Subscriber) release(n int64) {
	if n == 0 {
		return
	}
	v := s.outstanding.Add(-n)
	if v <= s.lowWater && v+n > s.lowWater {
		s.wakePoller()
	}
	if v < s.prefetch && v+n >= s.prefetch {
		s.signal()
	}
}

// Close stops fetching, commits the watermark of every partition (deliveries
// not yet acknowledged stay un-committed, so the group gets them again),
// leaves the group and closes the client. Settling a delivery after Close
// returns an error of kind Closed.
func (s *Subscriber) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		s.wg.Wait()
		ps, _ := s.detach(nil)
		if err := s.commit(ctx, ps, true); err != nil {
			s.closeErr = err
		}
		s.cl.AllowRebalance()
		if err := s.cl.LeaveGroupContext(ctx); err != nil && s.closeErr == nil && !errors.Is(err, context.Canceled) {
			s.closeErr = wrap("kafka: close subscriber", err)
		}
		s.cl.Close()
		s.signal()
	})
	return s.closeErr
}

// delivery is one delivery of a record. It implements driver.Delivery. Its
// msg belongs to whoever holds the delivery (Consume may change its
// Attempt while retrying in place); the adapter reads it only in Nack, on
// the holder's call, and keeps its own count in attempt.
type delivery struct {
	msg driver.Message
	p   *partition
	e   *entry // the record's entry; nil: ent (the record's first delivery)
	// handed is when the delivery was handed out, unix nanos (> 0); before
	// that, minus the time before which it may not be (see due), or 0. One
	// field for both (and no copy of the record's offset in ent) keeps a
	// delivery at 192 bytes, so that a chunk of 32 fills an allocation
	// size class exactly (208 bytes took 212 each).
	handed  atomic.Int64
	attempt int32 // the adapter's count: set before hand-out, then changed under p.mu
	settle  driver.Settlement
	ent     entry // the entry of the record's first delivery
}

// due is the time (unix nanos) before which d, not handed out yet, may not
// be: 0 for at once.
func (d *delivery) due() int64 {
	if h := d.handed.Load(); h < 0 {
		return -h
	}
	return 0
}

// wasHanded reports whether d was handed out.
func (d *delivery) wasHanded() bool { return d.handed.Load() > 0 }

// entry is the entry of d's record.
func (d *delivery) entry() *entry {
	if d.e != nil {
		return d.e
	}
	return &d.ent
}

// Message is the delivered message.
func (d *delivery) Message() *driver.Message { return &d.msg }

// Ack marks the record handled. Its offset is committed once every earlier
// record of the partition is acknowledged too, within CommitInterval — or
// before Ack returns, with CommitOnAck.
func (d *delivery) Ack(ctx context.Context) error {
	if first, err := d.settle.Ack(); !first {
		return err
	}
	return d.p.s.complete(ctx, d, true)
}

// Nack asks for the record again no sooner than delay, per the subscriber's
// NackStrategy; after MaxAttempts deliveries it goes to the dead-letter
// topic instead.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if first, err := d.settle.Nack(); !first {
		return err
	}
	return d.p.s.retry(ctx, d, max(delay, 0), "nacked", d.msg.Attempt)
}
