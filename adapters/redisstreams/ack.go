package redisstreams

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// acker sends the acks of an at-least-once subscriber: Ack queues the entry
// id and returns. On a *redis.Client the reader takes what is queued into
// the pipeline of its next XREADGROUP (readOwn), and the loop sends what
// the reader leaves while it may wait (readerWaits): in one pipeline of
// XACKs (one per shard), ackLinger after the first or at once when max are
// queued. Acks given while one pipeline is on its way share the next. A
// failed send is tried again with the next one.
type acker struct {
	s   *subscriber
	mu  sync.Mutex
	ids [][]string // per shard
	n   int
	// spare is the ids of the last batch sent, emptied, for the next batch
	// queued: the two sets of slices take turns, so that queueing acks
	// allocates nothing once they have grown (a third is made when the
	// reader and the loop both have a batch on its way).
	spare [][]string
	// max is how many queued acks the loop sends without lingering.
	max int
	// readerBusy is set while the reader is sure to take the acks queued
	// within a round trip (readOwn): the loop is not woken for them.
	readerBusy bool
	kick       chan struct{} // the first ack was queued
	full       chan struct{} // max acks are queued
	done       chan struct{}
}

func newAcker(s *subscriber) *acker {
	n := len(s.tk.streams)
	a := &acker{s: s, ids: make([][]string, n), spare: make([][]string, n), max: s.batch,
		kick: make(chan struct{}, 1), full: make(chan struct{}, 1), done: make(chan struct{})}
	if s.ropt != nil {
		// The reader sends what is queued with each XREADGROUP (readOwn),
		// every batch or more often while entries come; the loop sends
		// what it leaves: when the reader blocks on an empty stream or
		// waits for room. Deliveries are settled in up to prefetch, so more
		// are queued only when the reader is stuck.
		a.max = max(s.batch, int(s.prefetch))
	}
	return a
}

// ackLinger is how long the first ack queued waits for more.
const ackLinger = time.Millisecond

func (a *acker) add(shard int, id string) {
	a.mu.Lock()
	a.ids[shard] = append(a.ids[shard], id)
	a.n++
	n := a.n
	kick := n == 1 && !a.readerBusy
	a.mu.Unlock()
	if kick {
		signal(a.kick)
	}
	if n == a.max {
		signal(a.full)
	}
}

// readerWaits records whether the reader may now wait (block in Redis, or
// for room, a lease, a backoff) before it takes the acks queued, and wakes
// the loop for those queued meanwhile when it may.
func (a *acker) readerWaits(waits bool) {
	a.mu.Lock()
	a.readerBusy = !waits
	kick := waits && a.n > 0
	a.mu.Unlock()
	if kick {
		signal(a.kick)
	}
}

// loop sends the acks queued ackLinger after the first, or at once when
// max are queued, unless someone (the reader) took them meanwhile.
func (a *acker) loop() {
	defer close(a.done)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		select {
		case <-a.kick:
		case <-a.s.closing:
			return
		}
		a.mu.Lock()
		full := a.n >= a.max
		a.mu.Unlock()
		if !full {
			linger.Reset(ackLinger)
			select {
			case <-a.full:
				linger.Stop()
			case <-linger.C:
			case <-a.s.closing:
				return
			}
		}
		if err := a.flush(a.s.bg); err != nil {
			a.s.report(err)
			select { // try again soon, with whatever came meanwhile
			case <-time.After(100 * time.Millisecond):
				signal(a.kick)
			case <-a.s.closing:
				return
			}
		}
	}
}

// flush sends the queued acks; what failed is queued again.
func (a *acker) flush(ctx context.Context) error {
	batch := a.take()
	if batch == nil {
		return nil
	}
	s := a.s
	cmds := make([]*redis.IntCmd, len(batch))
	// A pipeline that fails sets the error of every command without a
	// reply: sent queues their acks again.
	_, _ = s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for sh, ids := range batch {
			if len(ids) > 0 {
				cmds[sh] = p.XAck(ctx, s.tk.streams[sh], s.group, ids...)
			}
		}
		return nil
	})
	errs := make([]error, len(batch))
	for sh, c := range cmds {
		if c != nil {
			errs[sh] = c.Err()
		}
	}
	return a.sent(batch, errs)
}

// take removes the queued acks, per shard, for the caller to send (queue)
// and then hand back (sent); nil when none are queued. The loop's flush and
// the reader (which sends them in the pipeline of its next XREADGROUP)
// take turns at it, or both have a batch on its way.
func (a *acker) take() [][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == 0 {
		return nil
	}
	batch := a.ids
	a.ids, a.spare = a.spare, nil
	if a.ids == nil { // the spare is on its way too
		a.ids = make([][]string, len(batch))
	}
	a.n = 0
	return batch
}

// sent ends batch, whose XACKs (one per shard with acks) ended with errs:
// the entries acked are no longer held, and the acks that failed are
// queued again (and the loop kicked to send them).
func (a *acker) sent(batch [][]string, errs []error) error {
	s := a.s
	var err error
	s.heldMu.Lock()
	for sh, ids := range batch {
		if errs[sh] != nil {
			err = errs[sh]
			continue
		}
		for _, id := range ids {
			delete(s.held[sh], id)
		}
	}
	s.heldMu.Unlock()
	a.mu.Lock()
	if err != nil {
		for sh, ids := range batch {
			if errs[sh] != nil {
				a.ids[sh] = append(a.ids[sh], ids...)
				a.n += len(ids)
			}
		}
	}
	if a.spare == nil {
		for sh := range batch {
			clear(batch[sh]) // the ids are garbage once sent or queued again
			batch[sh] = batch[sh][:0]
		}
		a.spare = batch
	}
	a.mu.Unlock()
	if err != nil {
		return wrap("redisstreams: ack", err)
	}
	return nil
}

// close stops the loop and sends what is left, within ctx.
func (a *acker) close(ctx context.Context) error {
	<-a.done
	err := a.flush(ctx)
	if err != nil {
		return errors.Join(errors.New("redisstreams: acks not sent (their messages will be redelivered)"), err)
	}
	return nil
}
