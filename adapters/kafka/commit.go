package kafka

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

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
	e := d.entry()
	e.done = true
	p.advance()
	p.settledLocked()
	target := e.offset() + 1
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
			return driver.WrapError(semantics.Transient, "kafka: ack", ctx.Err())
		}
	}
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
	p.eachTracked(func(first *delivery) bool {
		e := &first.ent
		if e.done {
			return true
		}
		n := e.deliveries(first)
		if n <= 0 {
			return true
		}
		if off := e.offset(); n == cnt && off == to+1 {
			to = off
			return true
		}
		flush()
		if len(b) > 3500 {
			cnt = 0
			return false
		}
		from, to, cnt = e.offset(), e.offset(), n
		return true
	})
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

	mu sync.Mutex
	// track holds the first deliveries of the records not yet committed
	// past, by offset, in runs: each run is part of one allocation of
	// deliveries (see Subscriber.track), so tracking a record and letting
	// it go write no pointer per record. t0 is the first run not let go,
	// head the first delivery of it not let go; no run is empty.
	track     [][]delivery
	t0, head  int
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

// watermark is the offset to commit: the lowest one not acknowledged, or
// the one after the last tracked record (p.mu held).
func (p *partition) watermark() int64 {
	if p.t0 < len(p.track) {
		return p.track[p.t0][p.head].ent.offset()
	}
	return p.next
}

// advance lets go of the acknowledged records at the head of track (p.mu
// held).
func (p *partition) advance() {
	for p.t0 < len(p.track) {
		run := p.track[p.t0]
		for p.head < len(run) && run[p.head].ent.done {
			p.head++
		}
		if p.head < len(run) {
			break
		}
		p.track[p.t0] = nil
		p.t0, p.head = p.t0+1, 0
	}
	if p.t0 == len(p.track) {
		p.track, p.t0 = p.track[:0], 0
	} else if p.t0 > 64 && p.t0 > len(p.track)/2 {
		k := copy(p.track, p.track[p.t0:])
		clear(p.track[k:])
		p.track, p.t0 = p.track[:k], 0
	}
}

// eachTracked calls f with the first delivery of each tracked record, in
// offset order, until f returns false (p.mu held).
func (p *partition) eachTracked(f func(first *delivery) bool) {
	head := p.head
	for _, run := range p.track[p.t0:] {
		for i := head; i < len(run); i++ {
			if !f(&run[i]) {
				return
			}
		}
		head = 0
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
// It lives in the record's first delivery.
type entry struct {
	rec  *kgo.Record
	cur  *delivery // the delivery that may settle it now; nil: the first
	base int32     // Attempt of the record's first delivery ever: its attempt header, or 1
	done bool      // acknowledged (or forwarded): committable
}

// offset is the record's offset.
func (e *entry) offset() int64 { return e.rec.Offset }

// current is the delivery that may settle e now; first is e's own.
func (e *entry) current(first *delivery) *delivery {
	if e.cur != nil {
		return e.cur
	}
	return first
}

// deliveries is how many times the record was handed out so far, counting
// those recorded before a crash or rebalance; first is e's own delivery
// (p.mu held).
func (e *entry) deliveries(first *delivery) int {
	cur := e.current(first)
	n := int(cur.attempt - e.base)
	if cur.wasHanded() {
		n++
	}
	return n
}
