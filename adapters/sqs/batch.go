package sqs

import (
	"context"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker/driver"
)

// Batch limits of SQS and SNS: entries per request and bytes per request.
const (
	maxBatchEntries = 10
	maxBatchBytes   = 256 * 1024
)

// job is one entry waiting for a batch request. finish is called exactly
// once with the entry's own result.
type job[T any] struct {
	ctx  context.Context
	v    T
	size int
	// deadline, when set, is when the entry's request must have been
	// answered (see delivery.Ack under at-most-once).
	deadline time.Time
	finish   func(error)
	chunk    int // at the first job of a chunk: how many jobs it has
}

// batcher gathers entries from concurrent callers into batch requests of
// up to maxEntries entries and maxBytes bytes, with at most maxInflight
// requests at a time. It adds no delay: an entry goes out at once when
// nothing is in flight, entries that arrive while requests are in flight
// form the next batches, and more requests run at once only for full
// batches. Requests run on goroutines that exist only while entries are
// pending, so a batcher needs no closing.
type batcher[T any] struct {
	maxInflight int
	maxEntries  int
	maxBytes    int
	timeout     time.Duration // per request
	send        func(ctx context.Context, batch []*job[T])
	// linger, when > 0, lets a partial batch wait that long for more
	// entries before it goes out (full is poked when one is full).
	linger time.Duration
	full   chan struct{}

	mu       sync.Mutex
	pending  []*job[T]
	inflight int
}

func newBatcher[T any](maxInflight, maxBytes int, timeout time.Duration, send func(context.Context, []*job[T])) *batcher[T] {
	return &batcher[T]{maxInflight: maxInflight, maxEntries: maxBatchEntries, maxBytes: maxBytes, timeout: timeout, send: send, full: make(chan struct{}, 1)}
}

// submitAndWait submits jobs and waits until done is closed (the jobs'
// finish functions close it), ctx ends or abort is closed (ErrClosed). When a request may start, the
// caller sends it itself rather than handing it to a new goroutine, and
// goes on sending pending batches until its own jobs are done: under load
// that saves a goroutine hand-off on each side of every request.
func (b *batcher[T]) submitAndWait(ctx context.Context, jobs []*job[T], done, abort <-chan struct{}) error {
	if n := b.enqueue(jobs); n > 0 {
		for range n - 1 {
			go b.run(nil)
		}
		b.run(done)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-abort:
		select {
		case <-done: // finished meanwhile: its results stand
			return nil
		default:
		}
		return driver.ErrClosed
	}
}

// enqueue adds jobs to pending and returns how many runners to start;
// they are counted in flight already. Jobs submitted together are cut into
// chunks that fit one request, and a chunk is never split between
// requests, so that one caller's messages travel in as few requests as
// possible; chunks of different callers share a request when they fit.
func (b *batcher[T]) enqueue(jobs []*job[T]) int {
	for i := 0; i < len(jobs); {
		n, bytes := 0, 0
		for i+n < len(jobs) && n < b.maxEntries && (n == 0 || b.maxBytes == 0 || bytes+jobs[i+n].size <= b.maxBytes) {
			bytes += jobs[i+n].size
			n++
		}
		jobs[i].chunk = n
		i += n
	}
	b.mu.Lock()
	b.pending = append(b.pending, jobs...)
	// A new request starts for every full batch pending, and for a partial
	// one only when nothing is in flight: a partial batch waits for a
	// request to finish and fills meanwhile.
	want := len(b.pending) / b.maxEntries
	if want == 0 && b.inflight == 0 {
		want = 1
	}
	start := max(min(want, b.maxInflight-b.inflight), 0)
	b.inflight += start
	if len(b.pending) >= b.maxEntries {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
	b.mu.Unlock()
	return start
}

// submit queues jobs without waiting for them: their finish functions
// report the results.
func (b *batcher[T]) submit(jobs ...*job[T]) {
	for range b.enqueue(jobs) {
		go b.run(nil)
	}
}

// do submits one entry and waits for its result, or for ctx. A non-zero
// deadline bounds the request that carries it.
func (b *batcher[T]) do(ctx context.Context, v T, deadline time.Time) error {
	var res error
	done := make(chan struct{})
	j := &job[T]{ctx: ctx, v: v, deadline: deadline, finish: func(err error) { res = err; close(done) }, chunk: 1}
	if err := b.submitAndWait(ctx, []*job[T]{j}, done, nil); err != nil {
		return err
	}
	return res
}

// run sends pending batches until there are none, or, when until is not
// nil, until it is closed.
func (b *batcher[T]) run(until <-chan struct{}) {
	for {
		if until != nil {
			select {
			case <-until:
				b.leave()
				return
			default:
			}
		}
		if b.linger > 0 {
			b.mu.Lock()
			partial := len(b.pending) < b.maxEntries
			b.mu.Unlock()
			if partial {
				t := time.NewTimer(b.linger)
				select {
				case <-b.full:
				case <-t.C:
				}
				t.Stop()
			}
		}
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.inflight--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()

		live := batch[:0]
		var deadline time.Time
		now := time.Now()
		for _, j := range batch {
			if err := j.ctx.Err(); err != nil {
				j.finish(err) // its caller gave up before it was sent
				continue
			}
			if !j.deadline.IsZero() {
				if !j.deadline.After(now) {
					j.finish(context.DeadlineExceeded)
					continue
				}
				if deadline.IsZero() || j.deadline.Before(deadline) {
					deadline = j.deadline
				}
			}
			live = append(live, j)
		}
		if len(live) == 0 {
			continue
		}
		// The request outlives no caller's patience by more than timeout,
		// and one caller giving up does not abort the others' entries; it
		// ends by the earliest deadline of its entries.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(live[0].ctx), b.timeout)
		if !deadline.IsZero() {
			ctx, cancel = withDeadline(ctx, cancel, deadline)
		}
		b.send(ctx, live)
		cancel()
	}
}

// withDeadline bounds ctx (whose cancel is cancel) by deadline too.
func withDeadline(ctx context.Context, cancel context.CancelFunc, deadline time.Time) (context.Context, context.CancelFunc) {
	dctx, dcancel := context.WithDeadline(ctx, deadline)
	return dctx, func() { dcancel(); cancel() }
}

// leave takes a runner out of flight that stops with batches pending,
// starting others for them as submit would.
func (b *batcher[T]) leave() {
	b.mu.Lock()
	b.inflight--
	want := len(b.pending) / b.maxEntries
	if want == 0 && b.inflight == 0 && len(b.pending) > 0 {
		want = 1
	}
	start := max(min(want, b.maxInflight-b.inflight), 0)
	b.inflight += start
	b.mu.Unlock()
	for range start {
		go b.run(nil)
	}
}

// take removes the next batch from pending. b.mu is held.
func (b *batcher[T]) take() []*job[T] {
	n, bytes := 0, 0
	for n < len(b.pending) {
		c, cb := b.pending[n].chunk, 0
		for _, j := range b.pending[n : n+c] {
			cb += j.size
		}
		if n > 0 && (n+c > b.maxEntries || (b.maxBytes > 0 && bytes+cb > b.maxBytes)) {
			break
		}
		n += c
		bytes += cb
	}
	if n == 0 {
		return nil
	}
	batch := make([]*job[T], n)
	copy(batch, b.pending[:n])
	clear(b.pending[:n])
	b.pending = b.pending[n:]
	if len(b.pending) == 0 {
		b.pending = nil
	}
	return batch
}
