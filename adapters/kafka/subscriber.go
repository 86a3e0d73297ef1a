package kafka

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// headerRetryAt carries a retry-topic record's due time (unix
// milliseconds); it is stripped on delivery.
const headerRetryAt = broker.HeaderPrefix + "retry-at"

// HeaderOriginalPartition and HeaderOriginalOffset locate a dead letter's
// source record; the adapter sets them next to broker.HeaderOriginalTopic.
const (
	HeaderOriginalPartition = broker.HeaderPrefix + "original-partition"
	HeaderOriginalOffset    = broker.HeaderPrefix + "original-offset"
)

var validGroup = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)

// Subscriber consumes one topic in one consumer group. It implements
// broker.Subscriber and broker.BatchReceiver; see the package documentation
// for its commit, rebalance and nack behaviour.
type Subscriber struct {
	b          *Broker
	opts       broker.SubscriberOptions
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

	strs        strArena      // keys and IDs of fetched records; the poller's own
	notify      chan struct{} // cap 1: deliveries became ready
	room        chan struct{} // cap 1: outstanding fell below prefetch
	kick        chan struct{} // cap 1: commit now (CommitOnAck)
	outstanding atomic.Int64  // deliveries attached and not finally settled

	commitMu  sync.Mutex // one commit at a time
	closeOnce sync.Once
	closeErr  error
}

var (
	_ broker.Subscriber    = (*Subscriber)(nil)
	_ broker.BatchReceiver = (*Subscriber)(nil)
)

type topicPart struct {
	topic string
	part  int32
}

// NewSubscriber joins consumer group opts.Group (Options.Group when empty)
// on opts.Topic, creating the topic — and the dead-letter and retry topics
// it needs — unless Options.ManualTopics is set.
func (b *Broker) NewSubscriber(ctx context.Context, opts broker.SubscriberOptions) (broker.Subscriber, error) {
	return b.Subscribe(ctx, opts)
}

// Subscribe is NewSubscriber returning the concrete type.
func (b *Broker) Subscribe(ctx context.Context, opts broker.SubscriberOptions) (*Subscriber, error) {
	const op = "kafka: subscribe"
	if b.closed.Load() {
		return nil, broker.ErrClosed
	}
	if err := opts.Validate(op); err != nil {
		return nil, err
	}
	if opts.Group == "" {
		opts.Group = b.opts.Group
	}
	opts = opts.WithDefaults()
	s := &Subscriber{
		b:          b,
		opts:       opts,
		prefetch:   int64(b.opts.Prefetch),
		ackTimeout: opts.AckTimeout,
		commitAck:  b.opts.CommitOnAck,
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

// Receive returns the next delivery.
func (s *Subscriber) Receive(ctx context.Context) (broker.Delivery, error) {
	var buf [1]broker.Delivery
	if _, err := s.ReceiveBatch(ctx, buf[:]); err != nil {
		return nil, err
	}
	return buf[0], nil
}

// ReceiveBatch blocks until a delivery is ready, then fills buf with as many
// as are ready, in offset order per partition.
func (s *Subscriber) ReceiveBatch(ctx context.Context, buf []broker.Delivery) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	for {
		s.mu.Lock()
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
			} else {
				s.signal() // more for another receiver (the taken head is reclaimed by appendReady)
			}
			s.mu.Unlock()
			return n, nil
		}
		if s.closed {
			s.mu.Unlock()
			return 0, broker.ErrClosed
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
			return 0, broker.WrapError(semantics.Transient, "kafka: receive", ctx.Err())
		}
	}
}

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

// release subtracts n settled deliveries from the outstanding count and
// wakes the poller when it falls to the low-water mark.
func (s *Subscriber) release(n int64) {
	if n == 0 {
		return
	}
	v := s.outstanding.Add(-n)
	if v <= s.lowWater && v+n > s.lowWater {
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
}

// poll fetches records while there is room under the prefetch bound.
func (s *Subscriber) poll() {
	defer s.wg.Done()
	var pending []*delivery
	for {
		for s.outstanding.Load() > s.lowWater {
			select {
			case <-s.room:
			case <-s.ctx.Done():
				return
			}
		}
		fs := s.cl.PollRecords(s.ctx, int(s.prefetch-s.outstanding.Load()))
		if s.ctx.Err() != nil || fs.IsClientClosed() {
			s.cl.AllowRebalance()
			return
		}
		fs.EachError(s.noteFetchErr)
		pending = s.attach(fs, pending)
		s.cl.AllowRebalance()
	}
}

// noteFetchErr keeps a fetch error that the client will not retry on its
// own, for Receive to return once.
func (s *Subscriber) noteFetchErr(topic string, part int32, err error) {
	if errors.Is(err, context.Canceled) || errors.Is(err, kgo.ErrClientClosed) {
		return
	}
	var ke *kerr.Error
	if errors.As(err, &ke) && ke.Retriable {
		return
	}
	kind := kindOf(err)
	if kind == semantics.Unknown {
		kind = semantics.Transient
	}
	s.mu.Lock()
	s.fetchErr = &broker.Error{Kind: kind, Op: "kafka: receive", Err: errors.Join(errors.New("fetching "+topic+"/"+strconv.Itoa(int(part))), err)}
	s.mu.Unlock()
	s.signal()
}

// attach turns fetched records into deliveries, decoded and tracked for
// commits without holding s.mu (receivers and acks go on meanwhile), then
// makes them ready, or holds them when their partition is paused or they
// are not due yet (retry topic). It returns pending, emptied, for reuse.
func (s *Subscriber) attach(fs kgo.Fetches, pending []*delivery) []*delivery {
	fs.EachPartition(func(fp kgo.FetchTopicPartition) {
		if len(fp.Records) > 0 {
			pending = s.track(fp, pending)
		}
	})
	if len(pending) == 0 {
		return pending
	}
	now := time.Now().UnixNano()
	s.mu.Lock()
	before := len(s.ready)
	for _, d := range pending {
		if d.p.paused || d.notBefore > now {
			s.holdLocked(d.p, d)
		} else {
			s.appendReady(d)
		}
	}
	if len(s.ready) > before {
		s.signal()
	}
	s.mu.Unlock()
	clear(pending)
	return pending[:0]
}

// track decodes fp's records not tracked yet into deliveries, appended to
// pending, and tracks their offsets for commits. Only the poller calls it,
// so p.next moves only here; p.mu is held just to read and update the
// partition, not while decoding.
func (s *Subscriber) track(fp kgo.FetchTopicPartition, pending []*delivery) []*delivery {
	tp := topicPart{fp.Topic, fp.Partition}
	s.mu.Lock()
	p := s.parts[tp]
	if p == nil {
		p = s.newPartition(tp)
		s.parts[tp] = p
	}
	s.mu.Unlock()
	p.mu.Lock()
	next, prior := p.next, p.prior // prior is replaced whole, never changed
	p.mu.Unlock()
	first := len(pending)
	var chunk []delivery // deliveries are allocated deliveryChunk at a time
	for i, r := range fp.Records {
		if r.Offset < next {
			continue // already tracked
		}
		if len(chunk) == 0 {
			chunk = make([]delivery, min(deliveryChunk, len(fp.Records)-i))
		}
		d := &chunk[0]
		chunk = chunk[1:]
		s.initDelivery(d, p, r, prior)
		next = r.Offset + 1
		pending = append(pending, d)
	}
	n := len(pending) - first
	if n == 0 {
		return pending
	}
	p.mu.Lock()
	for _, d := range pending[first:] {
		p.track = append(p.track, d.e)
	}
	p.next = next
	p.out += n
	p.mu.Unlock()
	s.outstanding.Add(int64(n))
	return pending
}

// deliveryChunk is how many deliveries one allocation holds: few
// allocations per message, and a retained *Message keeps at most a chunk
// alive.
const deliveryChunk = 32

// initDelivery makes d the first delivery of r; prior is p.prior.
func (s *Subscriber) initDelivery(d *delivery, p *partition, r *kgo.Record, prior map[int64]int) {
	d.p = p
	d.e = &d.ent
	d.ent.off, d.ent.rec, d.ent.cur = r.Offset, r, d
	d.notBefore = decodeRecordIn(r, &d.msg, p.retry, &s.strs)
	d.msg.Topic = s.opts.Topic
	d.ent.base = d.msg.Attempt
	if prior != nil {
		d.msg.Attempt += prior[r.Offset] // deliveries before a crash or rebalance
	}
}

// decodeRecord fills m from r: the ID from the queuekit-id header (or
// "topic/partition/offset" for a record from another producer), the attempt
// from queuekit-attempt (1 without it), the other headers as Headers. On a
// retry-topic record it strips the retry headers and returns when the record
// is due (unix nanos).
func decodeRecord(r *kgo.Record, m *broker.Message, retry bool) (notBefore int64) {
	return decodeRecordIn(r, m, retry, nil)
}

// decodeRecordIn is decodeRecord taking the key and ID from strs (nil: an
// allocation of their own).
func decodeRecordIn(r *kgo.Record, m *broker.Message, retry bool, strs *strArena) (notBefore int64) {
	m.Topic = r.Topic
	m.Payload = r.Value
	m.PublishedAt = r.Timestamp
	m.Attempt = 1
	var id []byte
	for _, h := range r.Headers {
		switch h.Key {
		case broker.HeaderID:
			id = h.Value
		case broker.HeaderAttempt:
			if n, err := strconv.Atoi(string(h.Value)); err == nil && n > 0 {
				m.Attempt = n
			}
		case headerRetryAt, broker.HeaderOriginalTopic:
			if !retry {
				m.SetHeader(h.Key, string(h.Value))
			} else if h.Key == headerRetryAt {
				if ms, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
					notBefore = ms * int64(time.Millisecond)
				}
			}
		default:
			m.SetHeader(h.Key, string(h.Value))
		}
	}
	// Key and ID share one allocation, or a slice of strs.
	if len(r.Key)+len(id) > 0 {
		s := strs.concat(r.Key, id)
		m.Key, m.ID = s[:len(r.Key)], s[len(r.Key):]
	}
	if m.ID == "" {
		// A record from another producer: its position is its identity.
		m.ID = r.Topic + "/" + strconv.Itoa(int(r.Partition)) + "/" + strconv.FormatInt(r.Offset, 10)
	}
	return notBefore
}

// strArena hands out strings carved from one buffer, so that the keys and
// IDs of a run of records cost one allocation rather than one each. They do
// not alias the fetch response: a key or ID that a user keeps (a dedupe
// store keeps IDs) pins at most one arena buffer (strArenaMax bytes), not
// the response. Bytes are written once, before the string over them is
// handed out, and never again.
type strArena struct{ buf []byte }

const (
	strArenaMax  = 4096 // largest arena buffer
	strArenaSolo = 512  // a key + ID longer than this gets its own allocation
)

// concat returns x followed by y as one string; a nil arena allocates it.
func (a *strArena) concat(x, y []byte) string {
	n := len(x) + len(y)
	if a == nil || n > strArenaSolo {
		var buf [128]byte
		return string(append(append(buf[:0], x...), y...))
	}
	if cap(a.buf)-len(a.buf) < n {
		// Room for about a delivery chunk of records like this one.
		a.buf = make([]byte, 0, min(max(n*deliveryChunk, 512), strArenaMax))
	}
	start := len(a.buf)
	a.buf = append(append(a.buf, x...), y...)
	return unsafe.String(&a.buf[start], n)
}

// holdLocked parks d in its partition's hold queue, pausing the partition so
// that nothing later of it is delivered first. s.mu is held.
func (s *Subscriber) holdLocked(p *partition, d *delivery) {
	p.insertHeld(d)
	if !p.paused {
		p.paused = true
		j := s.head
		for k := s.head; k < len(s.ready); k++ {
			if x := s.ready[k]; x.p == p {
				p.insertHeld(x)
			} else {
				s.ready[j] = x
				j++
			}
		}
		clear(s.ready[j:])
		s.ready = s.ready[:j]
		s.cl.PauseFetchPartitions(map[string][]int32{p.topic: {p.part}})
	}
	s.scheduleLocked(p)
}

// scheduleLocked releases p's due held deliveries now and arms a timer for
// the next one. s.mu is held.
func (s *Subscriber) scheduleLocked(p *partition) {
	if p.dropped {
		return
	}
	now := time.Now().UnixNano()
	i := 0
	for i < len(p.held) && p.held[i].notBefore <= now {
		i++
	}
	if i > 0 {
		s.appendReady(p.held[:i]...)
		k := copy(p.held, p.held[i:])
		clear(p.held[k:])
		p.held = p.held[:k]
		s.signal()
	}
	if len(p.held) == 0 {
		if p.timer != nil {
			p.timer.Stop()
		}
		if p.paused {
			p.paused = false
			s.cl.ResumeFetchPartitions(map[string][]int32{p.topic: {p.part}})
		}
		return
	}
	wait := time.Duration(p.held[0].notBefore - now)
	if p.timer == nil {
		p.timer = time.AfterFunc(wait, func() {
			s.mu.Lock()
			s.scheduleLocked(p)
			s.mu.Unlock()
		})
	} else {
		p.timer.Reset(wait)
	}
}

// complete settles d for good (acked, dead-lettered or moved to the retry
// topic): its offset may now be committed.
func (s *Subscriber) complete(ctx context.Context, d *delivery, wait bool) error {
	p := d.p
	p.mu.Lock()
	if p.gone {
		p.mu.Unlock()
		s.release(1)
		return s.goneErr(p)
	}
	d.e.done = true
	p.advance()
	p.settledLocked()
	target := d.e.off + 1
	p.mu.Unlock()
	s.release(1)
	if wait && s.commitAck {
		return s.waitCommit(ctx, p, target)
	}
	return nil
}

func (s *Subscriber) goneErr(p *partition) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errf(semantics.Closed, "kafka: ack", "subscriber closed: %s/%d will be redelivered from its last commit", p.topic, p.part)
	}
	return errf(semantics.Transient, "kafka: ack", "partition %s/%d was revoked by a rebalance: the message will be redelivered to its new owner", p.topic, p.part)
}

// waitCommit returns once an offset commit of p covers target.
func (s *Subscriber) waitCommit(ctx context.Context, p *partition, target int64) error {
	select {
	case s.kick <- struct{}{}:
	default:
	}
	for {
		p.mu.Lock()
		if p.committed >= target {
			p.mu.Unlock()
			return nil
		}
		if p.gone {
			p.mu.Unlock()
			return s.goneErr(p)
		}
		ch := p.commitCh
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return broker.WrapError(semantics.Transient, "kafka: ack", ctx.Err())
		}
	}
}

// retry brings a nacked or expired delivery back: dead-lettered once it has
// had MaxAttempts, otherwise republished to the retry topic or held in
// memory, per the Nack strategy.
func (s *Subscriber) retry(ctx context.Context, d *delivery, delay time.Duration, why string) error {
	if s.opts.MaxAttempts > 0 && d.msg.Attempt >= s.opts.MaxAttempts {
		reason := why + " " + strconv.Itoa(d.msg.Attempt) + " times (MaxAttempts " + strconv.Itoa(s.opts.MaxAttempts) + ")"
		if err := s.forward(ctx, d, s.opts.DeadLetterTopic, func(hs []kgo.RecordHeader) []kgo.RecordHeader {
			return append(hs,
				header(broker.HeaderOriginalTopic, s.opts.Topic),
				header(broker.HeaderDeadReason, reason),
				header(broker.HeaderDeadAttempts, strconv.Itoa(d.msg.Attempt)),
				header(broker.HeaderLastFailure, time.Now().UTC().Format(time.RFC3339Nano)),
				header(HeaderOriginalPartition, strconv.Itoa(int(d.e.rec.Partition))),
				header(HeaderOriginalOffset, strconv.FormatInt(d.e.off, 10)))
		}); err != nil {
			s.redeliver(d, delay)
			return wrap("kafka: nack", errors.Join(errors.New("dead-lettering failed, the message will be redelivered"), err))
		}
		return s.complete(ctx, d, false)
	}
	if s.retryTopic != "" {
		// Rounded up: the header keeps milliseconds, and a retry must never
		// come early.
		due := (time.Now().Add(delay).UnixNano() + int64(time.Millisecond) - 1) / int64(time.Millisecond)
		if err := s.forward(ctx, d, s.retryTopic, func(hs []kgo.RecordHeader) []kgo.RecordHeader {
			return append(hs,
				header(broker.HeaderAttempt, strconv.Itoa(d.msg.Attempt+1)),
				header(headerRetryAt, strconv.FormatInt(due, 10)),
				header(broker.HeaderOriginalTopic, s.opts.Topic))
		}); err != nil {
			s.redeliver(d, delay)
			return wrap("kafka: nack", errors.Join(errors.New("publishing to the retry topic failed, the message is redelivered from memory"), err))
		}
		return s.complete(ctx, d, false)
	}
	s.redeliver(d, delay)
	return nil
}

func header(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }

// forward produces a copy of d's record to topic, keeping key, payload,
// timestamp and user headers, with headers added by extra.
func (s *Subscriber) forward(ctx context.Context, d *delivery, topic string, extra func([]kgo.RecordHeader) []kgo.RecordHeader) error {
	src := d.e.rec
	hs := make([]kgo.RecordHeader, 0, len(src.Headers)+7)
	for _, h := range src.Headers {
		switch h.Key {
		case broker.HeaderAttempt, headerRetryAt, broker.HeaderOriginalTopic, HeaderOriginalPartition, HeaderOriginalOffset,
			broker.HeaderDeadReason, broker.HeaderDeadAttempts, broker.HeaderLastFailure:
			continue // replaced by extra, not duplicated
		}
		hs = append(hs, h)
	}
	if d.msg.ID != "" && !hasHeader(src.Headers, broker.HeaderID) {
		hs = append(hs, header(broker.HeaderID, d.msg.ID))
	}
	r := &kgo.Record{Topic: topic, Key: src.Key, Value: src.Value, Timestamp: src.Timestamp, Headers: extra(hs)}
	return s.cl.ProduceSync(ctx, r).FirstErr()
}

func hasHeader(hs []kgo.RecordHeader, k string) bool {
	for _, h := range hs {
		if h.Key == k {
			return true
		}
	}
	return false
}

// redeliver puts a new delivery of d's record, one attempt later, in the
// hold queue of its partition, due after delay. A partition being revoked or
// closed just lets go: the record stays un-committed.
func (s *Subscriber) redeliver(d *delivery, delay time.Duration) {
	p := d.p
	s.mu.Lock()
	defer s.mu.Unlock()
	p.mu.Lock()
	if p.gone || p.revoking || p.dropped || s.closed {
		p.settledLocked()
		p.mu.Unlock()
		s.release(1)
		return
	}
	nd := &delivery{p: p, e: d.e, msg: d.msg, notBefore: time.Now().Add(delay).UnixNano()}
	nd.msg.Attempt++
	if d.msg.Headers != nil {
		nd.msg.Headers = make(map[string]string, len(d.msg.Headers))
		for k, v := range d.msg.Headers {
			nd.msg.Headers[k] = v
		}
	}
	d.e.cur = nd
	p.mu.Unlock()
	s.holdLocked(p, nd)
}

// sweeper redelivers deliveries left unsettled for longer than AckTimeout,
// as if their consumer had died.
func (s *Subscriber) sweeper() {
	defer s.wg.Done()
	t := time.NewTicker(max(s.ackTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	var expired []*delivery
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		deadline := time.Now().Add(-s.ackTimeout).UnixNano()
		expired = expired[:0]
		for _, p := range s.partitions() {
			p.mu.Lock()
			for _, e := range p.track[p.head:] {
				if e.done {
					continue
				}
				if h := e.cur.handed.Load(); h != 0 && h < deadline && !e.cur.settle.Settled() {
					expired = append(expired, e.cur)
				}
			}
			p.mu.Unlock()
		}
		for i, d := range expired {
			expired[i] = nil
			if first, _ := d.settle.Nack(); first {
				_ = s.retry(s.ctx, d, 0, "not acknowledged within "+s.ackTimeout.String())
			}
		}
	}
}

func (s *Subscriber) partitions() []*partition {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := make([]*partition, 0, len(s.parts))
	for _, p := range s.parts {
		ps = append(ps, p)
	}
	return ps
}

// committer commits acknowledged offsets every CommitInterval, and at once
// when a CommitOnAck Ack is waiting.
func (s *Subscriber) committer() {
	defer s.wg.Done()
	t := time.NewTicker(s.b.opts.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		_ = s.commit(s.ctx, s.partitions(), false)
	}
}

// commit commits the watermark (lowest un-acknowledged offset) of ps where
// it or the delivery counts of the records in flight changed since the last
// commit. The counts travel in the commit's metadata, so that a member that
// takes over a partition after a crash or rebalance continues the attempt
// count. With final, the partitions are given up: later acks on them fail.
func (s *Subscriber) commit(ctx context.Context, ps []*partition, final bool) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	type mark struct {
		p    *partition
		wm   int64
		meta string
	}
	var marks []mark
	offs := map[string]map[int32]kgo.EpochOffset{}
	metas := map[topicPart]string{}
	for _, p := range ps {
		p.mu.Lock()
		if p.gone {
			p.mu.Unlock()
			continue
		}
		wm, committed, last := p.watermark(), p.committed, p.meta
		meta := p.attemptsMeta()
		if final {
			p.gone = true
		}
		p.mu.Unlock()
		if wm < 0 || wm < committed || (wm == committed && meta == last) {
			if final {
				p.wake()
			}
			continue
		}
		marks = append(marks, mark{p, wm, meta})
		if offs[p.topic] == nil {
			offs[p.topic] = map[int32]kgo.EpochOffset{}
		}
		offs[p.topic][p.part] = kgo.EpochOffset{Epoch: -1, Offset: wm}
		metas[topicPart{p.topic, p.part}] = meta
	}
	if len(marks) == 0 {
		return nil
	}
	ctx = kgo.PreCommitFnContext(ctx, func(req *kmsg.OffsetCommitRequest) error {
		for i := range req.Topics {
			t := &req.Topics[i]
			for j := range t.Partitions {
				if m, ok := metas[topicPart{t.Topic, t.Partitions[j].Partition}]; ok {
					t.Partitions[j].Metadata = &m
				}
			}
		}
		return nil
	})
	var cerr error
	failed := map[topicPart]bool{}
	s.cl.CommitOffsetsSync(ctx, offs, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			cerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, pr := range t.Partitions {
				if perr := kerr.ErrorForCode(pr.ErrorCode); perr != nil {
					failed[topicPart{t.Topic, pr.Partition}] = true
					cerr = perr
				}
			}
		}
	})
	for _, m := range marks {
		if ok := cerr == nil || (len(failed) > 0 && !failed[topicPart{m.p.topic, m.p.part}]); ok {
			m.p.mu.Lock()
			if m.wm >= m.p.committed {
				m.p.committed, m.p.meta = m.wm, m.meta
			}
			m.p.mu.Unlock()
		}
		m.p.wake()
	}
	if cerr != nil {
		return wrap("kafka: commit", cerr)
	}
	return nil
}

// attemptsMeta encodes how often each record in flight was delivered, as
// "qk1:" and comma-separated "offset*count" or "first-last*count" runs,
// within Kafka's default 4096-byte limit on commit metadata (runs past it
// are left out: those records start counting again). p.mu held.
func (p *partition) attemptsMeta() string {
	var b []byte
	var from, to int64
	cnt := 0
	flush := func() {
		if cnt == 0 {
			return
		}
		if len(b) == 0 {
			b = append(b, metaPrefix...)
		} else {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, from, 10)
		if to != from {
			b = append(b, '-')
			b = strconv.AppendInt(b, to, 10)
		}
		b = append(b, '*')
		b = strconv.AppendInt(b, int64(cnt), 10)
	}
	for _, e := range p.track[p.head:] {
		if e.done {
			continue
		}
		n := e.deliveries()
		if n <= 0 {
			continue
		}
		if n == cnt && e.off == to+1 {
			to = e.off
			continue
		}
		flush()
		if len(b) > 3500 {
			cnt = 0
			break
		}
		from, to, cnt = e.off, e.off, n
	}
	flush()
	return string(b)
}

const metaPrefix = "qk1:"

// parseAttemptsMeta decodes attemptsMeta; anything else decodes to nil.
func parseAttemptsMeta(s string) map[int64]int {
	rest, ok := strings.CutPrefix(s, metaPrefix)
	if !ok || rest == "" {
		return nil
	}
	out := map[int64]int{}
	for _, run := range strings.Split(rest, ",") {
		span, count, ok := strings.Cut(run, "*")
		n, err := strconv.Atoi(count)
		if !ok || err != nil || n <= 0 {
			return nil
		}
		first, last, isRange := strings.Cut(span, "-")
		a, err1 := strconv.ParseInt(first, 10, 64)
		z := a
		var err2 error
		if isRange {
			z, err2 = strconv.ParseInt(last, 10, 64)
		}
		if err1 != nil || err2 != nil || z < a || z-a > 1<<16 {
			return nil
		}
		for o := a; o <= z; o++ {
			out[o] = n
		}
	}
	return out
}

// onFetched reads the delivery counts that the previous owner of each newly
// assigned partition left in its commit metadata.
func (s *Subscriber) onFetched(_ context.Context, _ *kgo.Client, resp *kmsg.OffsetFetchResponse) error {
	set := func(topic string, part int32, meta *string) {
		if meta == nil || topic == "" {
			return
		}
		prior := parseAttemptsMeta(*meta)
		if prior == nil {
			return
		}
		s.mu.Lock()
		p := s.parts[topicPart{topic, part}]
		if p == nil {
			p = s.newPartition(topicPart{topic, part})
			s.parts[topicPart{topic, part}] = p
		}
		s.mu.Unlock()
		p.mu.Lock()
		p.prior = prior
		p.mu.Unlock()
	}
	for _, t := range resp.Topics {
		for _, pr := range t.Partitions {
			set(t.Topic, pr.Partition, pr.Metadata)
		}
	}
	for _, g := range resp.Groups {
		for _, t := range g.Topics {
			name := t.Topic
			if name == "" {
				name = s.topicIDs[t.TopicID]
			}
			for _, pr := range t.Partitions {
				set(name, pr.Partition, pr.Metadata)
			}
		}
	}
	return nil
}

// onAssigned starts tracking newly assigned partitions.
func (s *Subscriber) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, parts := range assigned {
		for _, part := range parts {
			tp := topicPart{t, part}
			if p := s.parts[tp]; p == nil || p.dropped {
				s.parts[tp] = s.newPartition(tp)
			}
		}
	}
}

// onRevoked stops delivering the revoked partitions, waits (up to
// DrainTimeout) for their in-flight deliveries to be settled, and commits
// their watermark: never past a message that was not acknowledged.
func (s *Subscriber) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	ps, closing := s.detach(revoked)
	if !closing {
		deadline := time.NewTimer(s.b.opts.DrainTimeout)
		defer deadline.Stop()
	drain:
		for _, p := range ps {
			if ch := p.drainCh(); ch != nil {
				select {
				case <-ch:
				case <-deadline.C:
					break drain
				case <-ctx.Done():
					break drain
				}
			}
		}
	}
	_ = s.commit(ctx, ps, true)
}

// onLost gives up partitions whose ownership is already gone: nothing can
// be committed for them.
func (s *Subscriber) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	ps, _ := s.detach(lost)
	for _, p := range ps {
		p.mu.Lock()
		p.gone = true
		p.mu.Unlock()
		p.wake()
	}
}

// detach removes the named partitions (all, when which is nil) from
// delivery: their ready and held deliveries are dropped un-committed.
func (s *Subscriber) detach(which map[string][]int32) ([]*partition, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ps []*partition
	if which == nil {
		for _, p := range s.parts {
			ps = append(ps, p)
		}
	} else {
		for t, parts := range which {
			for _, part := range parts {
				if p := s.parts[topicPart{t, part}]; p != nil {
					ps = append(ps, p)
				}
			}
		}
	}
	dropped := map[*partition]int{}
	for _, p := range ps {
		delete(s.parts, topicPart{p.topic, p.part})
		p.dropped = true
		if p.timer != nil {
			p.timer.Stop()
		}
		dropped[p] += len(p.held)
		clear(p.held)
		p.held = nil
		if p.paused {
			p.paused = false
			s.cl.ResumeFetchPartitions(map[string][]int32{p.topic: {p.part}})
		}
	}
	j := s.head
	for k := s.head; k < len(s.ready); k++ {
		x := s.ready[k]
		if x.p.dropped {
			dropped[x.p]++
		} else {
			s.ready[j] = x
			j++
		}
	}
	clear(s.ready[j:])
	s.ready = s.ready[:j]
	var total int64
	for p, n := range dropped {
		p.mu.Lock()
		p.revoking = true
		p.out -= n
		p.mu.Unlock()
		total += int64(n)
	}
	for _, p := range ps {
		if dropped[p] == 0 {
			p.mu.Lock()
			p.revoking = true
			p.mu.Unlock()
		}
	}
	s.release(total)
	return ps, s.closed
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

// partition tracks one assigned partition: the offsets in flight (for
// commits) and the deliveries held back by a nack or a retry delay.
type partition struct {
	s     *Subscriber
	topic string
	part  int32
	retry bool // a partition of the retry topic

	// guarded by s.mu
	paused  bool
	dropped bool
	held    []*delivery // by offset
	timer   *time.Timer

	mu        sync.Mutex
	track     []*entry // records not yet committed past, by offset
	head      int
	next      int64         // offset after the last tracked record; -1 before any
	committed int64         // last committed offset; -1 before any
	meta      string        // commit metadata last committed (see attemptsMeta)
	prior     map[int64]int // deliveries per offset before this assignment, from commit metadata
	out       int           // deliveries attached and not finally settled
	revoking  bool
	gone      bool          // no more acks: revoked, lost or closed
	drained   chan struct{} // closed when out reaches 0 while revoking
	commitCh  chan struct{} // closed when committed moves or gone is set
}

func (s *Subscriber) newPartition(tp topicPart) *partition {
	return &partition{s: s, topic: tp.topic, part: tp.part, retry: s.retryTopic != "" && tp.topic == s.retryTopic,
		next: -1, committed: -1, commitCh: make(chan struct{})}
}

// insertHeld puts d in held by offset (s.mu held).
func (p *partition) insertHeld(d *delivery) {
	i := sort.Search(len(p.held), func(i int) bool { return p.held[i].e.off > d.e.off })
	p.held = slices.Insert(p.held, i, d)
}

// watermark is the offset to commit: the lowest one not acknowledged, or
// the one after the last tracked record (p.mu held).
func (p *partition) watermark() int64 {
	if p.head < len(p.track) {
		return p.track[p.head].off
	}
	return p.next
}

// advance drops acknowledged records from the head of track (p.mu held).
func (p *partition) advance() {
	for p.head < len(p.track) && p.track[p.head].done {
		p.track[p.head] = nil
		p.head++
	}
	if p.head == len(p.track) {
		p.track, p.head = p.track[:0], 0
	} else if p.head > 1024 && p.head > len(p.track)/2 {
		k := copy(p.track, p.track[p.head:])
		clear(p.track[k:])
		p.track, p.head = p.track[:k], 0
	}
}

// settledLocked counts one delivery finally settled (p.mu held).
func (p *partition) settledLocked() {
	p.out--
	if p.out <= 0 && p.drained != nil {
		close(p.drained)
		p.drained = nil
	}
}

// drainCh returns a channel closed once every delivery of the revoked
// partition is settled, or nil when none is left.
func (p *partition) drainCh() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out <= 0 {
		return nil
	}
	if p.drained == nil {
		p.drained = make(chan struct{})
	}
	return p.drained
}

// wake tells commit waiters to look again.
func (p *partition) wake() {
	p.mu.Lock()
	close(p.commitCh)
	p.commitCh = make(chan struct{})
	p.mu.Unlock()
}

// entry is one record in flight; every delivery of the record shares it.
type entry struct {
	off  int64
	rec  *kgo.Record
	base int       // Attempt of the record's first delivery ever: its attempt header, or 1
	done bool      // acknowledged (or forwarded): committable
	cur  *delivery // the delivery that may settle it now
}

// deliveries is how many times the record was handed out so far, counting
// those recorded before a crash or rebalance (p.mu held).
func (e *entry) deliveries() int {
	n := e.cur.msg.Attempt - e.base
	if e.cur.handed.Load() != 0 {
		n++
	}
	return n
}

// delivery is one delivery of a record. It implements broker.Delivery.
type delivery struct {
	msg       broker.Message
	settle    broker.Settlement
	p         *partition
	e         *entry
	handed    atomic.Int64 // unix nanos when handed out; 0 before
	notBefore int64        // unix nanos before which it is not delivered
	ent       entry        // storage of e for the first delivery
}

// Message is the delivered message.
func (d *delivery) Message() *broker.Message { return &d.msg }

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
	return d.p.s.retry(ctx, d, max(delay, 0), "nacked")
}
