package kafka

import (
	"context"
	"errors"
	"math"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker/driver"
)

// HeaderOriginalPartition and HeaderOriginalOffset locate a dead letter's
// source record; the adapter sets them next to driver.HeaderOriginalTopic.
const (
	HeaderOriginalPartition = driver.HeaderPrefix + "original-partition"
	HeaderOriginalOffset    = driver.HeaderPrefix + "original-offset"
)

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
	for i < len(p.held) && p.held[i].due() <= now {
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
	wait := time.Duration(p.held[0].due() - now)
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

// retry brings a nacked or expired delivery back: dead-lettered once it has
// had MaxAttempts, otherwise republished to the retry topic or held in
// memory, per the Nack strategy. attempt is the delivery's Attempt as its
// holder sees it (Consume may retry a message in place, counting up); the
// adapter's own count is used when it is higher.
func (s *Subscriber) retry(ctx context.Context, d *delivery, delay time.Duration, why string, attempt int) error {
	d.p.mu.Lock()
	if attempt > int(d.attempt) {
		d.attempt = int32(min(attempt, math.MaxInt32))
	} else {
		attempt = int(d.attempt)
	}
	d.p.mu.Unlock()
	if s.opts.MaxAttempts > 0 && attempt >= s.opts.MaxAttempts {
		reason := why + " " + strconv.Itoa(attempt) + " times (MaxAttempts " + strconv.Itoa(s.opts.MaxAttempts) + ")"
		if err := s.forward(ctx, d, s.opts.DeadLetterTopic, func(hs []kgo.RecordHeader) []kgo.RecordHeader {
			return append(hs,
				header(driver.HeaderOriginalTopic, s.opts.Topic),
				header(driver.HeaderDeadReason, reason),
				header(driver.HeaderDeadAttempts, strconv.Itoa(attempt)),
				header(driver.HeaderLastFailure, time.Now().UTC().Format(time.RFC3339Nano)),
				header(HeaderOriginalPartition, strconv.Itoa(int(d.entry().rec.Partition))),
				header(HeaderOriginalOffset, strconv.FormatInt(d.entry().offset(), 10)))
		}); err != nil {
			s.redeliver(d, delay, attempt)
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
				header(driver.HeaderAttempt, strconv.Itoa(attempt+1)),
				header(headerRetryAt, strconv.FormatInt(due, 10)),
				header(driver.HeaderOriginalTopic, s.opts.Topic))
		}); err != nil {
			s.redeliver(d, delay, attempt)
			return wrap("kafka: nack", errors.Join(errors.New("publishing to the retry topic failed, the message is redelivered from memory"), err))
		}
		return s.complete(ctx, d, false)
	}
	s.redeliver(d, delay, attempt)
	return nil
}

func header(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }

// forward produces a copy of d's record to topic, keeping key, payload,
// timestamp and user headers, with headers added by extra.
func (s *Subscriber) forward(ctx context.Context, d *delivery, topic string, extra func([]kgo.RecordHeader) []kgo.RecordHeader) error {
	src := d.entry().rec
	hs := make([]kgo.RecordHeader, 0, len(src.Headers)+7)
	for _, h := range src.Headers {
		switch h.Key {
		case driver.HeaderAttempt, driver.HeaderPublishedAt, headerRetryAt, driver.HeaderOriginalTopic, HeaderOriginalPartition, HeaderOriginalOffset,
			driver.HeaderDeadReason, driver.HeaderDeadAttempts, driver.HeaderLastFailure:
			continue // replaced by extra, not duplicated
		}
		hs = append(hs, h)
	}
	if !hasHeader(src.Headers, driver.HeaderID) {
		hs = append(hs, header(driver.HeaderID, positionID(src)))
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

// redeliver puts a new delivery of d's record, attempt+1, in the hold queue
// of its partition, due after delay. The message is decoded from the record
// again, not copied from d's, which its holder may still be using. A
// partition being revoked or closed just lets go: the record stays
// un-committed.
func (s *Subscriber) redeliver(d *delivery, delay time.Duration, attempt int) {
	p := d.p
	e := d.entry()
	nd := &delivery{p: p, e: e, attempt: int32(min(attempt, math.MaxInt32-1) + 1)}
	decodeRecord(e.rec, &nd.msg, p.retry)
	nd.msg.Topic = s.opts.Topic
	nd.msg.Attempt = int(nd.attempt)
	nd.handed.Store(-time.Now().Add(delay).UnixNano()) // not handed out: due then
	s.mu.Lock()
	defer s.mu.Unlock()
	p.mu.Lock()
	if p.gone || p.revoking || p.dropped || s.closed {
		p.settledLocked()
		p.mu.Unlock()
		s.release(1)
		return
	}
	e.cur = nd
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
			p.eachTracked(func(first *delivery) bool {
				if first.ent.done {
					return true
				}
				cur := first.ent.current(first)
				if h := cur.handed.Load(); h > 0 && h < deadline && !cur.settle.Settled() {
					expired = append(expired, cur)
				}
				return true
			})
			p.mu.Unlock()
		}
		for i, d := range expired {
			expired[i] = nil
			if first, _ := d.settle.Nack(); first {
				_ = s.retry(s.ctx, d, 0, "not acknowledged within "+s.ackTimeout.String(), 0) // the adapter's own count
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

// insertHeld puts d in held by offset (s.mu held).
func (p *partition) insertHeld(d *delivery) {
	off := d.entry().offset()
	i := sort.Search(len(p.held), func(i int) bool { return p.held[i].entry().offset() > off })
	p.held = slices.Insert(p.held, i, d)
}
