package memory

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
)

// entry is one message in one group, from publish to ack or dead letter.
// Its first delivery is embedded, and its Message is the group's copy of
// the message, so that a message costs one allocation from publish to ack.
// A redelivery gets a fresh delivery copied from the first (handlers treat
// delivered messages as read-only), so that a stale handle can never settle
// a later delivery.
type entry struct {
	first    delivery
	key      string // the message's key, kept apart from what handlers see
	g        *group
	attempts int32  // deliveries so far; guarded by g.mu
	owns     bool   // e owns its key in g.keys, from then until it is removed; guarded by g.mu
	due      int64  // when a delayed redelivery, or a scheduled first delivery, is due (nanotime); 0: not scheduled
	seq      uint64 // order of entries with the same due in the delayed heap; guarded by g.mu
	next     *entry // next entry waiting for the same key; guarded by g.mu
	khash    uint64 // key's hash in the group's keyTable, once computed; guarded by g.mu
}

// init makes e the copy of m in group g, with payload and headers (m's own
// copied, or shared where they may be). DeliverAt is not delivered (see
// broker.Message.DeliverAt).
//
// It copies field by field: e is fresh (zero), and a whole-struct copy is a
// bulk write barrier over every word of the Message while the garbage
// collector runs, which is much of the time at millions of messages a
// second. TestDeliveriesCarryEveryField fails when Message gains a field
// that this does not carry.
func (e *entry) init(m *broker.Message, payload []byte, headers map[string]string, g *group) {
	c := &e.first.msg
	c.ID, c.Key, c.Payload, c.Headers = m.ID, m.Key, payload, headers
	c.Topic, c.Attempt = g.t.name, 1
	c.PublishedAt = m.PublishedAt
	e.key = m.Key
	e.g = g
}

// delivery is one delivery of an entry; it implements driver.Delivery.
type delivery struct {
	msg    broker.Message
	e      *entry
	settle driver.Settlement
	// state is stInflight from delivery until Ack (stAcked) or until the
	// group takes the delivery back (stGone: nacked, expired, released),
	// whichever comes first.
	state   atomic.Uint32
	ackNext *delivery // in the group's stack of acks to process

	// guarded by e.g.mu
	sub        *subscriber // in sub's in-flight list; nil when not in flight
	prev, next *delivery   // in sub's in-flight list, deadline order
	deadline   int64
}

const (
	stIdle uint32 = iota
	stInflight
	stAcked
	stGone
)

func (d *delivery) Message() *broker.Message { return &d.msg }

// Ack removes the message from its group. It returns ErrExpired when the
// delivery had already timed out or been released by Subscriber.Close.
//
// Ack does not wait for the group's lock: it pushes d on the group's stack
// of acks, which whoever holds the lock processes before releasing it (or
// Ack itself, when the lock is free).
func (d *delivery) Ack(ctx context.Context) error {
	if first, err := d.settle.Ack(); !first {
		return err
	}
	g := d.e.g
	if g.isClosed.Load() {
		return broker.ErrClosed
	}
	if !d.state.CompareAndSwap(stInflight, stAcked) {
		return ErrExpired
	}
	for {
		top := g.acks.Load()
		d.ackNext = top
		if g.acks.CompareAndSwap(top, d) {
			break
		}
	}
	if g.mu.TryLock() {
		g.unlock()
	}
	return nil
}

// Nack makes the message available again after delay. On a delivery that
// had already expired it does nothing and returns nil: the message is being
// redelivered anyway.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if first, err := d.settle.Nack(); !first {
		return err
	}
	return d.e.g.nack(d, delay)
}

// group is one consumer group of a topic: a queue of entries with in-flight
// tracking. Everything is guarded by mu.
type group struct {
	t    *topic
	name string
	cap  int

	mu       sync.Mutex
	acks     atomic.Pointer[delivery] // acked deliveries to process under mu
	isClosed atomic.Bool              // closed, for Ack without the lock
	closed   bool
	ready    ring
	keys     keyTable
	blocked  int // entries waiting behind their key's owner
	inflight int
	delayed  dheap  // nacked with a delay, or scheduled, until due
	seq      uint64 // next entry.seq
	count    int    // entries held (all states) plus room reserved by publishers
	subs     []*subscriber

	waiters int           // receivers waiting for ready entries
	signal  chan struct{} // wakes one waiting receiver (it wakes the next)

	pubWaiters int           // publishers waiting for room
	room       chan struct{} // wakes one waiting publisher (it wakes the next)
	wakeAt     int           // count at or below which waiting publishers wake

	// Pacing (Options.Pace): while paced and the group has subscribers,
	// publishers take pace as its capacity, waiting at most paceWait for
	// room; a wait that runs out clears paced until the subscribers have
	// taken count down to paceWake, or for 100 paceWaits.
	pace, paceWake int // pace 0: no pacing
	paced          bool
	unpacedAt      int64 // when paced was cleared (nanotime)

	timer   *time.Timer
	timerAt int64 // when the timer fires; 0 when not armed

	published, acked, redelivered, dead uint64
}

func newGroup(t *topic, name string, c *core) *group {
	g := &group{
		t:      t,
		name:   name,
		cap:    c.buffer,
		keys:   newKeyTable(),
		signal: make(chan struct{}, 1),
		room:   make(chan struct{}, 1),
		wakeAt: wakePoint(c.buffer),
	}
	if c.pace > 0 && c.pace < c.buffer {
		g.pace, g.paceWake, g.paced = c.pace, wakePoint(c.pace), true
	}
	return g
}

// wakePoint is the count at or below which publishers waiting for a group
// of capacity n wake: a sixteenth of it free, so that they wake once per
// batch of acks rather than per ack.
func wakePoint(n int) int { return n - max(1, n/16) }

// paceWait is the longest a publisher waits for the subscribers of a paced
// group (Options.Pace): far longer than subscribers that keep up take to
// free a sixteenth of the pace, even through a garbage collection or a
// virtual CPU's stolen time, and short enough that a publisher whom the
// subscribers themselves wait for (a handler publishing to its own topic,
// and all of them doing so) loses little. Once it runs out, publishers fill
// the group up to Buffer until the subscribers catch up, or for 100
// paceWaits: such a publisher loses at most 1% of its time. A
// variable for tests (SetPaceWait).
var paceWait atomic.Int64

func init() { paceWait.Store(int64(5 * time.Millisecond)) }

// pacingLocked reports whether publishers take pace as the group's
// capacity now.
func (g *group) pacingLocked() bool {
	if !g.paced && g.pace > 0 && nanotime()-g.unpacedAt >= 100*paceWait.Load() {
		g.paced = true
	}
	return g.paced && len(g.subs) > 0
}

// limitLocked is the count up to which publishers may fill the group now.
func (g *group) limitLocked() int {
	if g.pacingLocked() {
		return g.pace
	}
	return g.cap
}

func (g *group) wakeReceiverLocked() {
	if g.waiters > 0 {
		select {
		case g.signal <- struct{}{}:
		default:
		}
	}
}

// freedLocked wakes a waiting publisher once enough room is free.
func (g *group) freedLocked() {
	if !g.paced && g.pace > 0 && g.count <= g.paceWake {
		g.paced = true // the subscribers caught up
	}
	wakeAt := g.wakeAt
	if g.pacingLocked() {
		wakeAt = g.paceWake
	}
	if g.pubWaiters > 0 && g.count <= wakeAt {
		g.wakePublisherLocked()
	}
}

func (g *group) wakePublisherLocked() {
	select {
	case g.room <- struct{}{}:
	default:
	}
}

// popLocked moves up to len(buf) ready entries in flight to s.
func (g *group) popLocked(s *subscriber, buf []driver.Delivery, now int64) int {
	n := 0
	for n < len(buf) && g.ready.n > 0 {
		if s.prefetch > 0 && s.n >= s.prefetch {
			break
		}
		e := g.ready.popFront()
		// An owner (a redelivery, or the next of its key let go by
		// removeLocked) goes without a probe.
		if e.key != "" && !e.owns {
			i, held := g.keys.Find(e.key, hashOf(e))
			if !held {
				g.keys.Put(i, e.key, e.khash, keyWait{})
				e.owns = true
			} else {
				ks := &g.keys.At(i).Val
				e.next = nil
				if ks.tail == nil {
					ks.head = e
				} else {
					ks.tail.next = e
				}
				ks.tail = e
				g.blocked++
				continue
			}
		}
		buf[n] = g.deliverLocked(e, s, now)
		n++
	}
	return n
}

func (g *group) deliverLocked(e *entry, s *subscriber, now int64) *delivery {
	e.attempts++
	d := &e.first
	if e.attempts > 1 {
		d = &delivery{msg: e.first.msg}
		g.redelivered++
	}
	d.e = e
	d.msg.Attempt = int(e.attempts)
	d.sub = s
	d.deadline = now + s.ackTimeout
	d.state.Store(stInflight)
	// Append to s's in-flight list: deadlines only grow within it.
	d.next = nil
	d.prev = s.tail
	if s.tail == nil {
		s.head = d
		if g.timerAt == 0 || d.deadline < g.timerAt {
			g.armLocked(d.deadline, now)
		}
	} else {
		s.tail.next = d
	}
	s.tail = d
	s.n++
	g.inflight++
	return d
}

// unlinkLocked takes d out of flight.
func (g *group) unlinkLocked(d *delivery) {
	s := d.sub
	if d.prev == nil {
		s.head = d.next
	} else {
		d.prev.next = d.next
	}
	if d.next == nil {
		s.tail = d.prev
	} else {
		d.next.prev = d.prev
	}
	d.prev, d.next, d.sub = nil, nil, nil
	s.n--
	g.inflight--
	if s.creditWait && s.n < s.prefetch {
		s.creditWait = false
		select {
		case s.credit <- struct{}{}:
		default:
		}
	}
}

// removeLocked forgets e (acked or dead-lettered) and lets the next message
// of its key go.
func (g *group) removeLocked(e *entry) {
	g.count--
	if e.key != "" {
		i, _ := g.keys.Find(e.key, e.khash) // e owns its key: it was delivered
		if ks := &g.keys.At(i).Val; ks.head != nil {
			nxt := ks.head
			ks.head = nxt.next
			if ks.head == nil {
				ks.tail = nil
			}
			nxt.next = nil
			nxt.owns = true
			g.blocked--
			g.ready.pushFront(nxt)
			g.wakeReceiverLocked()
		} else {
			g.keys.Remove(i)
		}
	}
	g.freedLocked()
}

// lock takes the group's lock and processes pending acks.
func (g *group) lock() {
	g.mu.Lock()
	g.drainAcksLocked()
}

// unlock processes pending acks and releases the lock, then makes sure that
// no ack pushed meanwhile is left unprocessed: if one was, and nobody holds
// the lock (whoever does will process it), it takes the lock again.
func (g *group) unlock() {
	for {
		g.drainAcksLocked()
		g.mu.Unlock()
		if g.acks.Load() == nil || !g.mu.TryLock() {
			return
		}
	}
}

func (g *group) drainAcksLocked() {
	d := g.acks.Swap(nil)
	for d != nil {
		next := d.ackNext
		d.ackNext = nil
		g.ackedLocked(d)
		d = next
	}
}

// ackedLocked removes the message of the acked delivery d, unless that was
// done already (d is processed both from the stack and by whoever found it
// acked).
func (g *group) ackedLocked(d *delivery) {
	if d.sub == nil || g.closed {
		return
	}
	g.unlinkLocked(d)
	g.removeLocked(d.e)
	g.acked++
}

// takeBackLocked claims in-flight d for the group (to nack, expire or
// release it) and unlinks it. It returns false, having processed the ack,
// when d was acked first.
func (g *group) takeBackLocked(d *delivery) bool {
	if !d.state.CompareAndSwap(stInflight, stGone) {
		g.ackedLocked(d)
		return false
	}
	g.unlinkLocked(d)
	return true
}

func (g *group) nack(d *delivery, delay time.Duration) error {
	g.lock()
	if g.closed {
		g.unlock()
		return broker.ErrClosed
	}
	s, e := d.sub, d.e
	if d.sub == nil || !g.takeBackLocked(d) {
		g.unlock() // expired or released: it is redelivered anyway
		return nil
	}
	var dead []*broker.Message
	switch {
	case s.maxAttempts > 0 && int(e.attempts) >= s.maxAttempts:
		dead = append(dead, g.deadLocked(e, "nacked", s.maxAttempts))
	case delay <= 0:
		g.ready.pushFront(e)
		g.wakeReceiverLocked()
	default:
		now := nanotime()
		e.due = now + int64(delay)
		g.holdLocked(e, now)
	}
	g.unlock()
	if dead != nil {
		g.t.c.deadLetter(s.dlq, dead)
	}
	return nil
}

// deadLocked removes e and returns its dead letter.
func (g *group) deadLocked(e *entry, why string, maxAttempts int) *broker.Message {
	g.removeLocked(e)
	g.dead++
	m := e.first.msg // Payload is shared and read-only; headers are copied below
	h := make(map[string]string, len(m.Headers)+3)
	for k, v := range m.Headers {
		h[k] = v
	}
	h[broker.HeaderDeadReason] = why + " on attempt " + strconv.Itoa(int(e.attempts)) + " (MaxAttempts " + strconv.Itoa(maxAttempts) + ")"
	h[broker.HeaderDeadAttempts] = strconv.Itoa(int(e.attempts))
	h[broker.HeaderOriginalTopic] = g.t.name
	m.Headers = h
	m.Topic, m.Attempt = "", 0
	return &m
}

// holdLocked keeps e, whose due is set, in the delayed heap until then.
func (g *group) holdLocked(e *entry, now int64) {
	e.seq = g.seq
	g.seq++
	g.delayed.push(e)
	if g.timerAt == 0 || e.due < g.timerAt {
		g.armLocked(e.due, now)
	}
}

// armLocked sets the timer to fire at when (nanotime).
func (g *group) armLocked(when, now int64) {
	g.timerAt = when
	d := time.Duration(when - now)
	if g.timer == nil {
		g.timer = time.AfterFunc(d, g.onTimer)
	} else {
		g.timer.Reset(d)
	}
}

// onTimer redelivers expired deliveries and due delayed entries.
func (g *group) onTimer() {
	g.lock()
	if g.closed {
		g.unlock()
		return
	}
	now := nanotime()
	g.timerAt = 0
	var dead []*broker.Message
	var dlqs []string
	next := int64(0)
	woke := false
	for _, s := range g.subs {
		for s.head != nil && s.head.deadline <= now {
			d := s.head
			e := d.e
			if !g.takeBackLocked(d) {
				continue // acked just now
			}
			if s.maxAttempts > 0 && int(e.attempts) >= s.maxAttempts {
				dead = append(dead, g.deadLocked(e, "ack timeout passed", s.maxAttempts))
				dlqs = append(dlqs, s.dlq)
				continue
			}
			g.ready.pushFront(e)
			woke = true
		}
		if s.head != nil && (next == 0 || s.head.deadline < next) {
			next = s.head.deadline
		}
	}
	for g.delayed.len() > 0 && g.delayed.min().due <= now {
		e := g.delayed.pop()
		if e.attempts == 0 {
			// Scheduled, never delivered: it joins the queue as a new
			// message would, behind what is ready (a redelivery goes to
			// the front).
			g.ready.pushBack(e)
		} else {
			g.ready.pushFront(e)
		}
		woke = true
	}
	if g.delayed.len() > 0 && (next == 0 || g.delayed.min().due < next) {
		next = g.delayed.min().due
	}
	if next != 0 {
		g.armLocked(next, now)
	}
	if woke {
		g.wakeReceiverLocked()
	}
	g.unlock()
	for i, m := range dead {
		g.t.c.deadLetter(dlqs[i], []*broker.Message{m})
	}
}

func (g *group) close() {
	g.lock()
	defer g.unlock()
	if g.closed {
		return
	}
	g.closed = true
	g.isClosed.Store(true)
	if g.timer != nil {
		g.timer.Stop()
	}
	g.wakePublisherLocked() // it sees closed and wakes the next
}

// ---- receiving ----

func (g *group) receive(ctx context.Context, s *subscriber, buf []driver.Delivery) (int, error) {
	g.lock()
	for {
		if s.closed || g.closed {
			g.unlock()
			return 0, broker.ErrClosed
		}
		if s.prefetch > 0 && s.n >= s.prefetch {
			s.creditWait = true
			g.unlock()
			select {
			case <-s.credit:
			case <-s.done:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			g.lock()
			continue
		}
		if g.ready.n > 0 {
			if n := g.popLocked(s, buf, nanotime()); n > 0 {
				if g.ready.n > 0 {
					g.wakeReceiverLocked() // pass the baton
				}
				g.unlock()
				return n, nil
			}
		}
		g.waiters++
		g.unlock()
		select {
		case <-g.signal:
		case <-s.done:
		case <-ctx.Done():
			g.lock()
			g.waiters--
			g.unlock()
			return 0, ctx.Err()
		}
		g.lock()
		g.waiters--
	}
}

// release makes s's unsettled deliveries available again, oldest first.
func (g *group) releaseLocked(s *subscriber) {
	for d := s.tail; d != nil; {
		prev := d.prev
		if g.takeBackLocked(d) {
			g.ready.pushFront(d.e)
		}
		d = prev
	}
	g.wakeReceiverLocked()
}

// ---- publishing ----

// reserve waits until g has room and reserves up to want places. Room under
// the pace is waited for paceWait at most (one timer per call).
func (g *group) reserve(ctx context.Context, want int, done <-chan struct{}) (int, error) {
	var pacing *time.Timer
	defer func() {
		if pacing != nil {
			pacing.Stop()
		}
	}()
	g.lock()
	for {
		if g.closed {
			if g.pubWaiters > 0 {
				g.wakePublisherLocked()
			}
			g.unlock()
			return 0, broker.ErrClosed
		}
		limit := g.limitLocked()
		if free := limit - g.count; free > 0 {
			k := min(want, free)
			g.count += k
			if free > k && g.pubWaiters > 0 {
				g.wakePublisherLocked() // pass the baton
			}
			g.unlock()
			return k, nil
		}
		var paceUp <-chan time.Time
		if limit < g.cap {
			if pacing == nil {
				pacing = time.NewTimer(time.Duration(paceWait.Load()))
			}
			paceUp = pacing.C
		}
		g.pubWaiters++
		g.unlock()
		var err error
		ranOut := false
		select {
		case <-g.room:
		case <-paceUp:
			ranOut = true
		case <-done:
			err = broker.ErrClosed
		case <-ctx.Done():
			err = ctx.Err()
		}
		g.lock()
		g.pubWaiters--
		if ranOut {
			// The subscribers did not keep up (or wait for this very
			// publisher): fill up to Buffer until they catch up.
			g.paced, g.unpacedAt = false, nanotime()
		}
		if err != nil {
			g.unlock()
			return 0, err
		}
	}
}

// unreserve gives back k reserved places.
func (g *group) unreserve(k int) {
	g.lock()
	g.count -= k
	g.freedLocked()
	g.unlock()
}

// insert queues ents, for which room was reserved. It reports false when
// the group is closed.
func (g *group) insert(ents []entry) bool {
	g.lock()
	ok := g.insertLocked(ents)
	g.unlock()
	return ok
}

func (g *group) insertLocked(ents []entry) bool {
	if g.closed {
		return false
	}
	var now int64
	for i := range ents {
		e := &ents[i]
		if e.due != 0 { // scheduled (see publisher.Publish)
			if now == 0 {
				now = nanotime()
			}
			if e.due > now {
				g.holdLocked(e, now)
				continue
			}
		}
		g.ready.pushBack(e)
	}
	g.published += uint64(len(ents))
	g.wakeReceiverLocked()
	return true
}

// ---- containers ----

// ring is a growable deque of entries.
type ring struct {
	buf  []*entry
	head int
	n    int
}

func (r *ring) grow() {
	nb := make([]*entry, max(16, 2*len(r.buf)))
	for i := 0; i < r.n; i++ {
		nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
	}
	r.buf, r.head = nb, 0
}

func (r *ring) pushBack(e *entry) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = e
	r.n++
}

func (r *ring) pushFront(e *entry) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.head = (r.head - 1) & (len(r.buf) - 1)
	r.buf[r.head] = e
	r.n++
}

func (r *ring) popFront() *entry {
	e := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	return e
}

// dheap is a min-heap of delayed entries by due time, then by the order
// they were delayed in (seq), so that messages of one key scheduled for the
// same time become ready in publish order.
type dheap []*entry

func (e *entry) before(o *entry) bool {
	return e.due < o.due || e.due == o.due && e.seq < o.seq
}

func (h dheap) len() int    { return len(h) }
func (h dheap) min() *entry { return h[0] }
func (h *dheap) push(e *entry) {
	*h = append(*h, e)
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if !a[i].before(a[p]) {
			break
		}
		a[p], a[i] = a[i], a[p]
		i = p
	}
}

func (h *dheap) pop() *entry {
	a := *h
	top := a[0]
	last := len(a) - 1
	a[0] = a[last]
	a[last] = nil
	a = a[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(a) && a[l].before(a[m]) {
			m = l
		}
		if r < len(a) && a[r].before(a[m]) {
			m = r
		}
		if m == i {
			break
		}
		a[m], a[i] = a[i], a[m]
		i = m
	}
	*h = a
	return top
}
