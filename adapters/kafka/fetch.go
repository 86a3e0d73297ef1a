package kafka

import (
	"context"
	"errors"
	"math"
	"strconv"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// poll moves what the client fetched into the subscriber's backlog, which
// receivers turn into deliveries (see fillLocked), and polls again once the
// backlog is used up and the deliveries outstanding are at most lowWater.
//
// It takes everything the client has buffered at once (PollFetches): the
// client sends its next fetch request only once its buffered fetch is
// taken, so taking it whole lets the next fetch travel while this one is
// handled, as a franz-go consumer calling PollFetches does. (Taking a
// prefetch's worth at a time left the handlers waiting for the round trip
// of every fetch.) The backlog holds the client's records, not deliveries:
// the prefetch bound counts deliveries, and the records' memory is the
// fetch's, which the client would hold anyway; at most one fetch waits in
// the backlog and one in the client, as with PollFetches.
//
// Receivers decode the records themselves, right before handing them out:
// no goroutine hand-off per record, and a delivery is still in its
// receiver's cache when the handler reads it.
func (s *Subscriber) poll() {
	defer s.wg.Done()
	for {
		for !s.wantPoll() {
			select {
			case <-s.room:
			case <-s.ctx.Done():
				return
			}
		}
		fs := s.cl.PollFetches(s.ctx)
		if s.ctx.Err() != nil || fs.IsClientClosed() {
			s.cl.AllowRebalance()
			return
		}
		fs.EachError(s.noteFetchErr)
		s.take(fs)
		s.cl.AllowRebalance()
	}
}

// wantPoll reports whether the backlog is used up and there is room.
func (s *Subscriber) wantPoll() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.backlog) == 0 && s.outstanding.Load() <= s.lowWater
}

// fetched is a partition's polled records not yet delivered.
type fetched struct {
	p    *partition
	recs []*kgo.Record
}

// take appends the records of fs, by partition, to the backlog and wakes a
// receiver. Each names the partition object it was polled for: one revoked
// meanwhile (dropped) loses its backlog, which was never tracked, so that
// its new owner fetches it again from the last commit.
func (s *Subscriber) take(fs kgo.Fetches) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.backlog)
	fs.EachPartition(func(fp kgo.FetchTopicPartition) {
		if len(fp.Records) == 0 {
			return
		}
		tp := topicPart{fp.Topic, fp.Partition}
		p := s.parts[tp]
		if p == nil {
			p = s.newPartition(tp)
			s.parts[tp] = p
		}
		s.backlog = append(s.backlog, fetched{p, fp.Records})
	})
	if len(s.backlog) > n {
		s.signal()
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
	s.fetchErr = &driver.Error{Kind: kind, Op: "kafka: receive", Err: errors.Join(errors.New("fetching "+topic+"/"+strconv.Itoa(int(part))), err)}
	s.mu.Unlock()
	s.signal()
}

// fillLocked turns up to room records of the backlog into deliveries,
// hands the first of those ready straight to buf, and returns how many it
// put there; the rest wait in ready (or held). s.mu is held on entry and on
// return, and released while the records are decoded and tracked, so that
// acks, and receivers taking what is ready, go on meanwhile. One receiver
// fills at a time (s.filling), which keeps each partition's records
// tracked in offset order.
func (s *Subscriber) fillLocked(room int, buf []driver.Delivery) int {
	s.filling = true
	cut := s.cut[:0]
	for len(s.backlog) > 0 && room > 0 {
		f := &s.backlog[0]
		if f.p.dropped {
			s.popBacklog()
			continue
		}
		k := min(room, len(f.recs))
		cut = append(cut, fetched{f.p, f.recs[:k]})
		room -= k
		if f.recs = f.recs[k:]; len(f.recs) == 0 {
			s.popBacklog()
		}
	}
	if len(s.backlog) == 0 {
		s.wakePoller()
	}
	s.mu.Unlock()

	runs := s.runs[:0]
	for _, f := range cut {
		runs = s.track(f.p, f.recs, runs)
	}
	clear(cut)
	s.cut = cut[:0]
	now := time.Now().UnixNano()
	var abandoned int64

	s.mu.Lock()
	if s.head < len(s.ready) {
		buf = nil // released from hold meanwhile: those go first
	}
	n := 0
	for _, run := range runs {
		for i := range run {
			d := &run[i]
			switch {
			case d.p.dropped:
				// Revoked while being decoded (a rebalance may run between
				// polls): never delivered, and tracked un-acknowledged, so
				// no commit passes it.
				d.p.mu.Lock()
				d.p.settledLocked()
				d.p.mu.Unlock()
				abandoned++
			case d.p.paused || d.due() > now:
				s.holdLocked(d.p, d)
			case n < len(buf):
				d.handed.Store(now)
				buf[n] = d
				n++
			default:
				s.appendReady(d)
			}
		}
	}
	clear(runs)
	s.runs = runs[:0]
	s.filling = false
	if abandoned > 0 {
		s.release(abandoned) // takes no lock
	}
	return n
}

// popBacklog drops the backlog's first entry (s.mu held).
func (s *Subscriber) popBacklog() {
	s.backlog[0] = fetched{}
	s.backlog = s.backlog[1:]
	if len(s.backlog) == 0 {
		s.backlog = nil // let the fetch's records go
	}
}

// wakePoller tells the poller to look at the backlog and the room again.
func (s *Subscriber) wakePoller() {
	select {
	case s.room <- struct{}{}:
	default:
	}
}

// track decodes recs of p not tracked yet into deliveries, appends them to
// runs (and to p.track) as runs of one allocation, and tracks their offsets
// for commits. Only the filling receiver calls it, so p.next moves only
// here; p.mu is held just to read and update the partition, not while
// decoding.
func (s *Subscriber) track(p *partition, recs []*kgo.Record, runs [][]delivery) [][]delivery {
	p.mu.Lock()
	next, prior := p.next, p.prior // prior is replaced whole, never changed
	p.mu.Unlock()
	first := len(runs)
	chunk, k, n := s.chunk, 0, 0 // chunk[:k] is the current run
	for _, r := range recs {
		if r.Offset < next {
			continue // already tracked
		}
		if k == len(chunk) {
			if k > 0 {
				runs = append(runs, chunk[:k:k])
			}
			chunk, k = make([]delivery, deliveryChunk), 0
		}
		s.initDelivery(&chunk[k], p, r, prior)
		k++
		next = r.Offset + 1
	}
	if k > 0 {
		runs = append(runs, chunk[:k:k])
	}
	s.chunk = chunk[k:]
	if len(runs) == first {
		return runs
	}
	for _, run := range runs[first:] {
		n += len(run)
	}
	p.mu.Lock()
	p.track = append(p.track, runs[first:]...)
	p.next = next
	p.out += n
	p.mu.Unlock()
	s.outstanding.Add(int64(n))
	return runs
}

// deliveryChunk is how many deliveries one allocation holds: few
// allocations per message, and a retained *Message keeps at most a chunk
// alive. As many as fill the allocator's 8 KiB size class after the 8-byte
// type header it puts in front of such an object: 42 of 192 bytes. (32
// deliveries, 6 KiB and the header, went to the next class up, 6.4% more.)
const deliveryChunk = (8192 - 8) / int(unsafe.Sizeof(delivery{}))

// maxAttempt bounds the attempt counts read from a record's header and
// from commit metadata, so that their sum fits the adapter's int32 count.
const maxAttempt = math.MaxInt32 / 2

// initDelivery makes d the first delivery of r; prior is p.prior.
func (s *Subscriber) initDelivery(d *delivery, p *partition, r *kgo.Record, prior map[int64]int) {
	d.p = p
	d.ent.rec = r
	d.msg.Topic = s.opts.Topic
	if due := decodeRecordIn(r, &d.msg, p.retry, &s.strs); due > 0 {
		d.handed.Store(-due)
	}
	d.msg.Attempt = min(d.msg.Attempt, maxAttempt)
	d.ent.base = int32(d.msg.Attempt)
	if prior != nil {
		d.msg.Attempt += min(prior[r.Offset], maxAttempt) // deliveries before a crash or rebalance
	}
	d.attempt = int32(d.msg.Attempt)
}
