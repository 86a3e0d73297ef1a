package redisstreams

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// subscriber implements driver.Subscriber and driver.BatchReceiver. Three
// goroutines feed it: the reader (XREADGROUP ... > on the shards it may
// read, and under PerKey the takeover claims), the claimer (claimScript:
// deliveries other consumers left unsettled, nacks that are due) and,
// under PerKey, the leaser (shard leases); a fourth sends the acks. Each
// read or claim is handed over as one batch, in order.
type subscriber struct {
	b        *Broker
	c        redis.UniversalClient
	tk       *topicKeys
	group    string
	consumer string
	delays   []string // delay set of each shard
	shardOf  map[string]int

	ackTimeout  time.Duration
	prefetch    int64
	batch       int
	block       time.Duration
	claimEvery  time.Duration
	maxAttempts int
	dlq         string
	amo, perKey bool

	in     chan []*delivery // batches read or claimed
	errs   chan error       // the background loops' latest error, for Receive
	credit chan struct{}    // a delivery was settled
	poke   chan struct{}    // claim now
	wake   chan struct{}    // the shards the reader may read changed

	rmu  sync.Mutex  // guards next
	next []*delivery // the rest of the batch Receive took last

	outstanding atomic.Int64   // deliveries held: reserved, queued or handed out
	shardOut    []atomic.Int64 // the same per shard (PerKey drains a shard to 0)
	epochs      []atomic.Uint64
	gone        atomic.Int64 // pending entries found trimmed away

	heldMu sync.Mutex
	held   []map[string]struct{} // per shard, the entries this subscriber holds as deliveries

	bg      context.Context // background operations; cancelled after Close
	cancel  context.CancelFunc
	closing chan struct{}
	loops   sync.WaitGroup
	once    sync.Once
	closed  chan struct{} // closed when Close's work is done
	err     error         // of Close's work
	acks    *acker
	dlqNext atomic.Uint32

	ropt    *redis.Options    // the client's options, when the reader has a connection of its own
	rconn   *readerConn       // that connection (the reader's alone), nil until made
	rid     atomic.Int64      // and its CLIENT ID, 0 when not known
	rfields []string          // the reader's: the fields of one entry
	rnames  map[string]string // the reader's: header names interned
	// The entries of the reader's last reply: views of its connection's
	// buffer, the fields of rents[i] rflat[rents[i].fields:rents[i+1].fields].
	rents []rentry
	rflat []string

	lease *leaser // nil unless PerKey
}

var (
	_ driver.Subscriber    = (*subscriber)(nil)
	_ driver.BatchReceiver = (*subscriber)(nil)
)

func newSubscriber(b *Broker, tk *topicKeys, o driver.SubscriberOptions) *subscriber {
	n := len(tk.streams)
	s := &subscriber{
		b: b, c: b.client, tk: tk, group: o.Group, consumer: consumerName(),
		delays:      make([]string, n),
		shardOf:     make(map[string]int, n),
		ackTimeout:  o.AckTimeout,
		prefetch:    int64(o.Prefetch),
		batch:       b.opts.Batch,
		block:       b.opts.Block,
		claimEvery:  b.opts.ClaimInterval,
		maxAttempts: o.MaxAttempts,
		dlq:         o.DeadLetterTopic,
		amo:         o.Guarantee == semantics.AtMostOnce,
		perKey:      o.Ordering == semantics.PerKey,
		errs:        make(chan error, 1),
		credit:      make(chan struct{}, 1),
		poke:        make(chan struct{}, 1),
		wake:        make(chan struct{}, 1),
		shardOut:    make([]atomic.Int64, n),
		held:        make([]map[string]struct{}, n),
		epochs:      make([]atomic.Uint64, n),
		closing:     make(chan struct{}),
		closed:      make(chan struct{}),
		in:          make(chan []*delivery, 64),
	}
	if s.ackTimeout == 0 {
		s.ackTimeout = b.opts.AckTimeout
	}
	if s.prefetch == 0 {
		s.prefetch = int64(b.opts.Prefetch)
	}
	if s.claimEvery == 0 {
		s.claimEvery = min(max(s.ackTimeout/4, minDefaultClaim), maxDefaultClaim)
	}
	for i, st := range tk.streams {
		s.delays[i] = tk.delay(i, o.Group)
		s.shardOf[st] = i
		s.held[i] = make(map[string]struct{})
	}
	s.bg, s.cancel = context.WithCancel(context.Background())
	if o, ok := ownConn(b.client); ok {
		s.ropt = o // the reader's connection is made by its first read
		s.rnames = make(map[string]string)
	}
	s.acks = newAcker(s)
	if s.perKey {
		s.lease = newLeaser(s)
	}
	s.loops.Add(2)
	go s.readLoop()
	go s.claimLoop()
	go s.acks.loop()
	if s.lease != nil {
		s.loops.Add(1)
		go s.lease.loop()
	}
	return s
}

// ---- Receive ----

// Receive returns the next delivery.
func (s *subscriber) Receive(ctx context.Context) (driver.Delivery, error) {
	for {
		if d, ok := s.queued(); ok {
			return d, nil
		}
		select {
		case batch := <-s.in:
			s.rmu.Lock()
			s.take(batch)
			s.rmu.Unlock()
		case err := <-s.errs:
			return nil, err
		case <-s.closing:
			return nil, driver.ErrClosed
		case <-ctx.Done():
			return nil, driver.Canceled("redisstreams: receive", ctx.Err())
		}
	}
}

// ReceiveBatch blocks like Receive, then adds the deliveries already queued
// (taken under one lock: driver.FillBatch would take it per delivery).
func (s *subscriber) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	d, err := s.Receive(ctx)
	if err != nil {
		return 0, err
	}
	buf[0] = d
	n := 1
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for n < len(buf) {
		if len(s.next) == 0 {
			select {
			case batch := <-s.in:
				s.take(batch)
			default:
				return n, nil
			}
			continue // (a batch is never empty)
		}
		if d := s.pop(); s.valid(d) {
			buf[n] = d
			n++
		}
	}
	return n, nil
}

// pop takes the first delivery of s.next (not empty; s.rmu held).
func (s *subscriber) pop() *delivery {
	d := s.next[0]
	s.next[0] = nil
	s.next = s.next[1:]
	if len(s.next) == 0 {
		s.next = nil
	}
	return d
}

// queued returns a delivery that is already here, without waiting.
func (s *subscriber) queued() (driver.Delivery, bool) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for {
		if len(s.next) == 0 {
			select {
			case batch := <-s.in:
				s.take(batch)
			default:
				return nil, false
			}
		}
		if d := s.pop(); s.valid(d) {
			return d, true
		}
	}
}

// take queues a batch handed over by push (the caller holds rmu): the
// batch itself when nothing else is queued.
func (s *subscriber) take(batch []*delivery) {
	if len(s.next) == 0 {
		s.next = batch
		return
	}
	s.next = append(s.next, batch...)
}

// push hands a batch to Receive; false when the subscriber closed first
// (the batch stays pending in Redis and is given back by Close).
func (s *subscriber) push(batch []*delivery) bool {
	if len(batch) == 0 {
		return true
	}
	select {
	case s.in <- batch:
		return true
	case <-s.closing:
		for _, d := range batch {
			d.release()
		}
		return false
	}
}

// valid reports whether d may be handed out: under PerKey, only while its
// shard is still leased as it was when d was read. A stale one is dropped:
// it stays pending and the shard's new owner claims it.
func (s *subscriber) valid(d *delivery) bool {
	if s.lease == nil || s.epochs[d.shard].Load() == d.epoch {
		return true
	}
	d.release()
	return false
}

// report hands a background error to the next Receive (keeping only the
// latest).
func (s *subscriber) report(err error) {
	for {
		select {
		case s.errs <- err:
			return
		default:
		}
		select {
		case <-s.errs:
		default:
		}
	}
}

// ---- holding deliveries ----

// reserve takes room for up to n deliveries and returns how many it took.
func (s *subscriber) reserve(n int) int {
	for {
		cur := s.outstanding.Load()
		room := s.prefetch - cur
		if room <= 0 {
			return 0
		}
		take := min(int64(n), room)
		if s.outstanding.CompareAndSwap(cur, cur+take) {
			return int(take)
		}
	}
}

// unreserve gives back room reserved and not used.
func (s *subscriber) unreserve(n int) {
	if n > 0 {
		s.outstanding.Add(-int64(n))
		signal(s.credit)
	}
}

// waitRoom waits until a delivery is settled, or the subscriber closes.
func (s *subscriber) waitRoom() bool {
	select {
	case <-s.credit:
		return true
	case <-s.closing:
		return false
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *subscriber) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// ---- the reader ----

func (s *subscriber) readLoop() {
	defer s.loops.Done()
	defer s.acks.readerWaits(true)
	backoff := time.Duration(0)
	more := false // the last read filled its count: the stream may have more
	all := make([]int, len(s.tk.streams))
	for i := range all {
		all[i] = i
	}
	for !s.isClosing() {
		if backoff > 0 {
			s.acks.readerWaits(true)
			select {
			case <-time.After(backoff):
			case <-s.closing:
				return
			}
		}
		shards := all
		if s.lease != nil {
			if err := s.lease.takeovers(); err != nil {
				s.report(err)
				backoff = nextBackoff(backoff)
				continue
			}
			if shards = s.lease.readable(); len(shards) == 0 {
				s.acks.readerWaits(true)
				select {
				case <-s.wake:
				case <-s.closing:
				}
				continue
			}
		}
		// The room is not reserved while XREADGROUP blocks, so that the
		// claimer can use it meanwhile: what the read returns may exceed
		// it by a few (per is at least 1 per shard).
		room := int(s.prefetch - s.outstanding.Load())
		if room <= 0 {
			s.acks.readerWaits(true)
			if !s.waitRoom() {
				return
			}
			continue
		}
		per := max(1, min(s.batch, room/len(shards)))
		n, err := s.read(shards, per, !more)
		more = n >= per
		if err != nil {
			if s.isClosing() {
				break
			}
			s.report(err)
			backoff = nextBackoff(backoff)
			continue
		}
		backoff = 0
	}
}

func nextBackoff(d time.Duration) time.Duration {
	return min(max(2*d, 50*time.Millisecond), 2*time.Second)
}

// read runs one XREADGROUP over shards, up to per entries from each, and
// queues what it returns. It blocks for new entries up to s.block when
// block is set (always on go-redis's XReadGroup).
//
// On the reader's own connection (a *redis.Client, see conn.go) the reply
// is read raw and decoded straight into the messages (reply.go). Other
// clients (a cluster, a client with an OnConnect hook) use go-redis's
// XReadGroup, which routes the command by its streams.
func (s *subscriber) read(shards []int, per int, block bool) (int, error) {
	const op = "redisstreams: receive"
	streams := make([]string, 2*len(shards))
	epochs := make([]uint64, len(s.tk.streams))
	for i, sh := range shards {
		streams[i] = s.tk.streams[sh]
		streams[len(shards)+i] = ">"
		epochs[sh] = s.epochs[sh].Load()
	}
	var n int
	var err error
	if s.ropt != nil {
		n, err = s.readOwn(streams, per, block, epochs)
	} else {
		n, err = s.readGoRedis(streams, per, epochs)
	}
	if err == redis.Nil {
		return 0, nil
	}
	if err != nil {
		if isNoGroup(err) {
			return 0, driver.Errorf(semantics.NotFound, op, "group %q of topic %q is gone (deleted in Redis?): %w", s.group, s.tk.topic, err)
		}
		return 0, wrap(op, err)
	}
	return n, nil
}

// readOwn runs the XREADGROUP on the reader's own connection (conn.go),
// made first when there is none.
//
// Only a blocking read follows a short one: after a read that filled its
// count the reader asks without BLOCK (an empty reply costs a round trip
// where the stream was drained to the count), so that while entries come
// it is never stuck in Redis and the acks it sends with each read (see
// below) go out within a round trip; the acker sends them while it waits.
func (s *subscriber) readOwn(streams []string, per int, block bool, epochs []uint64) (int, error) {
	c := s.rconn
	if c == nil {
		var err error
		if c, err = dialReader(s.bg, s.ropt); err != nil {
			return 0, err
		}
		s.rconn = c
		s.rid.Store(c.id)
	}
	// The acks queued go in the same round trip, before the read, as a
	// hand-written loop sends them: one write and one read where the
	// acker would make a round trip of its own (Redis's work per round
	// trip, the acker's wake-ups). What fails is queued again.
	acks := s.acks.take()
	for sh, ids := range acks {
		if len(ids) > 0 {
			c.command(3 + len(ids)).bulk("xack").bulk(s.tk.streams[sh]).bulk(s.group)
			for _, id := range ids {
				c.bulk(id)
			}
		}
	}
	c.command(7 + len(streams) + 2*btoi(block)).bulk("xreadgroup").bulk("group").bulk(s.group).bulk(s.consumer).
		bulk("count").num(int64(per))
	if block {
		c.bulk("block").num(s.block.Milliseconds())
	}
	c.bulk("streams")
	for _, st := range streams {
		c.bulk(st)
	}
	s.acks.readerWaits(block) // the acker sends what comes while it blocks
	// The connection's timeouts are what go-redis's XReadGroup's would
	// be: the block plus 10s.
	err := c.deadline(s.block + 10*time.Second)
	if err == nil {
		err = c.send()
	}
	var ackErrs []error
	if acks != nil {
		ackErrs = make([]error, len(acks))
		for sh, ids := range acks {
			if len(ids) == 0 {
				continue
			}
			if err != nil {
				ackErrs[sh] = err
			} else if _, aerr := c.simple(); aerr != nil {
				ackErrs[sh] = aerr
				var re replyError
				if !errors.As(aerr, &re) {
					err = aerr
				}
			}
		}
	}
	n := 0
	if err == nil {
		// The entries are collected as the reply is read, then decoded
		// once their number is known.
		s.rents, s.rflat = s.rents[:0], s.rflat[:0]
		n, err = c.xreadgroup(s.rfields, s.collect)
	}
	if acks != nil {
		if ackErr := s.acks.sent(acks, ackErrs); ackErr != nil {
			signal(s.acks.kick)
			if err == nil {
				s.report(ackErr)
			}
		}
	}
	if err != nil {
		if !isNoGroup(err) {
			// A connection that failed stays failed, and one that Redis
			// refuses (READONLY after a failover, LOADING...) may be to a
			// server the client no longer uses: the next read makes a
			// new one (through the client's Dialer).
			s.rid.Store(0)
			_ = c.Close()
			s.rconn = nil
		}
		return 0, err
	}
	if n < 0 {
		return 0, redis.Nil // the block ran out
	}
	q := s.newReadBatch(n, epochs)
	for i, e := range s.rents {
		end := len(s.rflat)
		if i+1 < len(s.rents) {
			end = s.rents[i+1].fields
		}
		sh, ok := s.shardOf[e.stream]
		if !ok {
			continue
		}
		m := q.slot()
		id := decodeView(m, s.rnames, s.tk.topic, s.tk.streams[sh], e.id, s.rflat[e.fields:end], 1)
		q.next(sh, id)
	}
	clear(s.rents) // views of a buffer that may be gone (grown) by the next read
	clear(s.rflat)
	return q.done(), nil
}

// rentry is an entry of the reader's last reply.
type rentry struct {
	stream, id string
	fields     int // its first field in rflat
}

// collect records an entry of the reply being read (xreadgroup).
func (s *subscriber) collect(stream, id string, fields []string) {
	s.rents = append(s.rents, rentry{stream: stream, id: id, fields: len(s.rflat)})
	s.rflat = append(s.rflat, fields...)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// readGoRedis runs the XREADGROUP with go-redis's XReadGroup.
func (s *subscriber) readGoRedis(streams []string, per int, epochs []uint64) (int, error) {
	a := &redis.XReadGroupArgs{Group: s.group, Consumer: s.consumer, Streams: streams, Count: int64(per), Block: s.block}
	res, err := s.c.XReadGroup(s.bg, a).Result()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, st := range res {
		n += len(st.Messages)
	}
	q := s.newReadBatch(n, epochs)
	for _, st := range res {
		sh, ok := s.shardOf[st.Stream]
		if !ok {
			continue
		}
		for _, e := range st.Messages {
			decodeMap(q.next(sh, e.ID), s.tk.topic, st.Stream, e.ID, e.Values, 1)
		}
	}
	return q.done(), nil
}

// newReadBatch counts n deliveries as held and starts their batch; the
// caller holds each (next) and hands the batch over (done).
//
// The deliveries and their messages are allocated for the whole batch at
// once (two allocations instead of two per entry). A delivery kept keeps
// its batch's arrays alive, and with them the other messages of the batch:
// one batch at most per delivery held, as before (the deliveries always
// shared one array).
func (s *subscriber) newReadBatch(n int, epochs []uint64) *readBatch {
	s.outstanding.Add(int64(n))
	s.heldMu.Lock()
	return &readBatch{s: s, n: n, epochs: epochs, batch: make([]*delivery, 0, n), ds: make([]delivery, n), msgs: make([]driver.Message, n)}
}

// done hands the batch to Receive and returns its size.
func (q *readBatch) done() int {
	s := q.s
	s.heldMu.Unlock()
	s.unreserve(q.n - len(q.batch))
	if len(q.batch) > 0 {
		select {
		case s.in <- q.batch:
			return len(q.batch)
		default: // Receive is behind: the reader may wait a while
			s.acks.readerWaits(true)
		}
	}
	s.push(q.batch)
	return len(q.batch)
}

// readBatch makes the deliveries of one read.
type readBatch struct {
	s      *subscriber
	n      int // deliveries counted as held
	epochs []uint64
	batch  []*delivery
	ds     []delivery
	msgs   []driver.Message
}

// slot is the message the next delivery will have.
func (q *readBatch) slot() *driver.Message { return &q.msgs[len(q.batch)] }

// next holds entry id of shard sh (the caller holds heldMu) and returns
// the message of its delivery, for the caller to decode into.
func (q *readBatch) next(sh int, id string) *driver.Message {
	m := q.slot()
	d := &q.ds[len(q.batch)]
	*d = delivery{s: q.s, shard: sh, id: id, epoch: q.epochs[sh], msg: m, attempt: 1}
	q.s.held[sh][id] = struct{}{}
	q.s.shardOut[sh].Add(1)
	q.batch = append(q.batch, d)
	return m
}

// unblock interrupts the reader's XREADGROUP where the client allows it.
func (s *subscriber) unblock() {
	if id := s.rid.Load(); id != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.c.ClientUnblock(ctx, id).Err()
		cancel()
	}
}

// ---- the claimer ----

func (s *subscriber) claimLoop() {
	defer s.loops.Done()
	t := time.NewTicker(s.claimEvery)
	defer t.Stop()
	cursors := make([]string, len(s.tk.streams))
	for i := range cursors {
		cursors[i] = "-"
	}
	all := make([]int, len(s.tk.streams))
	for i := range all {
		all[i] = i
	}
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		case <-s.poke:
		}
		if err := s.moveDue(); err != nil && !s.isClosing() {
			s.report(err)
		}
		shards := all
		if s.lease != nil {
			shards = s.lease.readable()
		}
		for _, sh := range shards {
			if err := s.claimAll(sh, &cursors[sh]); err != nil {
				if !s.isClosing() {
					s.report(err)
				}
				break
			}
		}
	}
}

// moveDue adds the topic's scheduled messages that are due to its streams
// (dueScript), and arranges a claim tick for the next one when it is due
// before the regular tick.
func (s *subscriber) moveDue() error {
	keys := append([]string{s.tk.sched(), s.tk.schedMsg()}, s.tk.streams...)
	for !s.isClosing() {
		res, err := dueScript.Run(s.bg, s.c, keys, s.batch, s.b.opts.MaxLen).Int64Slice()
		if err != nil {
			return wrap("redisstreams: scheduled messages", err)
		}
		if len(res) != 2 {
			return driver.Errorf(semantics.Unknown, "redisstreams: scheduled messages", "unexpected reply %v", res)
		}
		if res[0] == int64(s.batch) {
			continue // maybe more due
		}
		if next := time.Duration(res[1]) * time.Millisecond; res[1] >= 0 && next < s.claimEvery {
			time.AfterFunc(next+time.Millisecond, func() { signal(s.poke) })
		}
		return nil
	}
	return nil
}

// Modes of claimScript.
const (
	modeClaim    = "claim"
	modeTakeover = "takeover"
	modeIDs      = "ids"
)

// claimAll claims from shard sh, page by page while there is
// room, what is due after a nack and what other consumers left unsettled
// for the ack timeout; then the entries of this consumer unsettled that
// long that it does not hold (their XREADGROUP reply was lost).
func (s *subscriber) claimAll(sh int, cursor *string) error {
	var mine []string
	for !s.isClosing() {
		got := s.reserve(s.batch)
		if got == 0 {
			return nil
		}
		n, more, m, err := s.claim(sh, modeClaim, s.ackTimeout, got, cursor, nil)
		s.unreserve(got - n)
		mine = append(mine, m...)
		if err != nil {
			return err
		}
		if !more {
			break
		}
	}
	lost := mine[:0]
	s.heldMu.Lock()
	for _, id := range mine {
		if _, ok := s.held[sh][id]; !ok {
			lost = append(lost, id)
		}
	}
	s.heldMu.Unlock()
	for len(lost) > 0 && !s.isClosing() {
		got := s.reserve(min(len(lost), s.batch))
		if got == 0 {
			return nil
		}
		n, _, _, err := s.claim(sh, modeIDs, s.ackTimeout, got, cursor, lost[:got])
		s.unreserve(got - n)
		if err != nil {
			return err
		}
		lost = lost[got:]
	}
	return nil
}

// claim runs claimScript once on shard sh in mode for up to count entries
// (ids in mode ids), hands the live ones to Receive and dead-letters the
// dead ones. It returns how many it queued, whether there may be more, and the
// consumer's own idle entries it did not claim (mode claim).
func (s *subscriber) claim(sh int, mode string, minIdle time.Duration, count int, cursor *string, ids []string) (int, bool, []string, error) {
	const op = "redisstreams: claim"
	epoch := s.epochs[sh].Load()
	stream := s.tk.streams[sh]
	args := make([]any, 0, 7+len(ids))
	args = append(args, s.group, s.consumer, minIdle.Milliseconds(), count, s.maxAttempts, *cursor, mode)
	for _, id := range ids {
		args = append(args, id)
	}
	res, err := claimScript.Run(s.bg, s.c, []string{stream, s.delays[sh]}, args...).Slice()
	if err != nil {
		if isNoGroup(err) {
			return 0, false, nil, driver.Errorf(semantics.NotFound, op, "group %q of topic %q is gone (deleted in Redis?): %w", s.group, s.tk.topic, err)
		}
		return 0, false, nil, wrap(op, err)
	}
	if len(res) != 4 {
		return 0, false, nil, driver.Errorf(semantics.Unknown, op, "unexpected reply %v", res)
	}
	next, _ := res[0].(string)
	entries, _ := res[1].([]any)
	if g, _ := res[2].(int64); g > 0 {
		s.gone.Add(g)
	}
	var mine []string
	if raw, _ := res[3].([]any); len(raw) > 0 {
		mine = make([]string, 0, len(raw))
		for _, v := range raw {
			if id, ok := v.(string); ok {
				mine = append(mine, id)
			}
		}
	}
	if mode != modeIDs {
		*cursor = next
	}
	batch := make([]*delivery, 0, len(entries))
	var firstErr error
	for _, raw := range entries {
		e, _ := raw.([]any)
		if len(e) != 4 {
			continue
		}
		id, _ := e[0].(string)
		cnt, _ := e[1].(int64)
		fields, _ := e[2].([]any)
		dead, _ := e[3].(int64)
		m := decodeFlat(s.tk.topic, stream, id, fields, int(cnt))
		if dead == 1 {
			reason := "ack timeout passed on attempt " + strconv.FormatInt(cnt, 10) + " (MaxAttempts " + strconv.Itoa(s.maxAttempts) + ")"
			if err := s.deadLetter(s.bg, sh, id, m, int(cnt), reason); err != nil && firstErr == nil {
				firstErr = err // it stays pending: a later claim tries again
			}
			continue
		}
		batch = append(batch, s.hold(sh, id, epoch, m, int(cnt)))
	}
	s.push(batch)
	more := next != "-" || len(entries) >= count
	return len(batch), more && firstErr == nil, mine, firstErr
}

// hold makes the delivery of entry id of shard sh, held until released.
func (s *subscriber) hold(sh int, id string, epoch uint64, m *driver.Message, attempt int) *delivery {
	s.shardOut[sh].Add(1)
	s.heldMu.Lock()
	s.held[sh][id] = struct{}{}
	s.heldMu.Unlock()
	return &delivery{s: s, shard: sh, id: id, epoch: epoch, msg: m, attempt: attempt}
}

// deadLetter publishes m to the dead-letter topic, with the reason, the
// attempts and the original topic in headers, then acks entry id. A crash
// between the two leaves the entry pending: it is dead-lettered again
// (a duplicate dead letter, never a lost one).
func (s *subscriber) deadLetter(ctx context.Context, sh int, id string, m *driver.Message, attempts int, reason string) error {
	const op = "redisstreams: dead-letter"
	h := make(map[string]string, len(m.Headers)+3)
	for k, v := range m.Headers {
		h[k] = v
	}
	h[driver.HeaderDeadReason] = reason
	h[driver.HeaderDeadAttempts] = strconv.Itoa(attempts)
	h[driver.HeaderOriginalTopic] = s.tk.topic
	dl := &driver.Message{ID: m.ID, Key: m.Key, Payload: m.Payload, Headers: h, PublishedAt: m.PublishedAt}
	if err := s.b.add(ctx, op, s.dlq, []*driver.Message{dl}, &s.dlqNext); err != nil {
		return err
	}
	return wrap(op, s.c.XAck(ctx, s.tk.streams[sh], s.group, id).Err())
}

// ---- Close ----

// Close stops the subscriber: the reader, claimer and leaser stop, the acks
// given so far are sent, everything the consumer still holds is given back
// to the group (due at once) and the consumer leaves the group. That work
// runs on its own (each Redis call bounded by the client's timeouts); Close
// waits for it within ctx, and a Close whose ctx ended may be called again
// to wait for the rest.
func (s *subscriber) Close(ctx context.Context) error {
	s.once.Do(func() {
		close(s.closing)
		if s.lease != nil {
			s.lease.stop()
		}
		go s.shutdown()
	})
	select {
	case <-s.closed:
		return s.err
	case <-ctx.Done():
		return driver.Canceled("redisstreams: close subscriber", ctx.Err())
	}
}

// closeTimeout bounds the Redis calls of a subscriber's Close.
const closeTimeout = 30 * time.Second

func (s *subscriber) shutdown() {
	defer close(s.closed)
	done := make(chan struct{})
	go func() { s.loops.Wait(); close(done) }()
	for waiting := true; waiting; {
		s.unblock() // the reader may be in a blocking XREADGROUP
		select {
		case <-done:
			waiting = false
		case <-time.After(20 * time.Millisecond):
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	errs := []error{s.acks.close(ctx), s.park(ctx)}
	if s.lease != nil {
		errs = append(errs, s.lease.leave(ctx))
	}
	s.cancel()
	if s.rconn != nil { // the reader is gone: its connection is free
		_ = s.rconn.Close()
	}
	s.err = errors.Join(errs...)
}

// park gives back what the consumer holds on every shard (parkScript).
func (s *subscriber) park(ctx context.Context) error {
	var errs []error
	for i, st := range s.tk.streams {
		err := parkScript.Run(ctx, s.c, []string{st, s.delays[i]}, s.group, s.consumer, parkingConsumer).Err()
		if err != nil && !isNoGroup(err) {
			errs = append(errs, wrap("redisstreams: close subscriber", err))
		}
	}
	return errors.Join(errs...)
}

// ---- deliveries ----

// delivery is one entry handed to this subscriber.
type delivery struct {
	s        *subscriber
	shard    int
	id       string
	epoch    uint64
	msg      *driver.Message
	attempt  int // Redis's delivery count
	released atomic.Bool
}

func (d *delivery) Message() *driver.Message { return d.msg }

// release forgets d: its room goes back to the subscriber.
func (d *delivery) release() {
	if d.releaseRoom() {
		d.s.heldMu.Lock()
		delete(d.s.held[d.shard], d.id)
		d.s.heldMu.Unlock()
	}
}

// releaseRoom gives d's room back but keeps the entry counted as held
// (its ack is on its way: a claim must not take it back meanwhile); it
// reports whether it did, the first time.
func (d *delivery) releaseRoom() bool {
	if !d.released.CompareAndSwap(false, true) {
		return false
	}
	d.s.shardOut[d.shard].Add(-1)
	d.s.outstanding.Add(-1)
	signal(d.s.credit)
	return true
}

// Ack acknowledges the entry (XACK). Under AtLeastOnce it is queued and
// sent with the acks of other deliveries, right away; under AtMostOnce
// Ack returns once Redis removed the entry from the group's pending list,
// and fails when it was no longer there (claimed by another consumer
// after the ack timeout).
func (d *delivery) Ack(ctx context.Context) error {
	s := d.s
	if !s.amo {
		if d.releaseRoom() {
			s.acks.add(d.shard, d.id) // forgets it as held once sent
		}
		return nil
	}
	const op = "redisstreams: ack"
	n, err := s.c.XAck(ctx, s.tk.streams[d.shard], s.group, d.id).Result()
	if err != nil {
		return wrap(op, err)
	}
	d.release()
	if n == 0 {
		return driver.Errorf(semantics.Permanent, op, "message %s (entry %s) was no longer pending: its ack timeout passed and another consumer of the group took it", d.msg.ID, d.id)
	}
	return nil
}

// Nack makes the entry due again after delay; on its MaxAttempts-th
// attempt it is dead-lettered instead.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	s := d.s
	attempt := max(d.attempt, d.msg.Attempt)
	if s.maxAttempts > 0 && attempt >= s.maxAttempts {
		reason := "nacked on attempt " + strconv.Itoa(attempt) + " (MaxAttempts " + strconv.Itoa(s.maxAttempts) + ")"
		if err := s.deadLetter(ctx, d.shard, d.id, d.msg, attempt, reason); err != nil {
			return err
		}
		d.release()
		return nil
	}
	ms := (delay + time.Millisecond - 1) / time.Millisecond // never sooner than delay
	err := nackScript.Run(ctx, s.c, []string{s.delays[d.shard]}, d.id, int64(ms)).Err()
	if err != nil {
		return wrap("redisstreams: nack", err)
	}
	d.release()
	if delay <= 0 {
		signal(s.poke)
	} else {
		// Due by the server's clock, a little after ours started: the
		// claim may find it not due yet, and the next tick takes it.
		time.AfterFunc(delay+2*time.Millisecond, func() { signal(s.poke) })
	}
	return nil
}
