package sqs

import (
	"context"
	"sync"
	"time"
)

// Batch limits of SQS and SNS: entries per request and bytes per request.
const (
	maxBatchEntries = 10
	maxBatchBytes   = 256 * 1024
)

// job is one entry waiting for a batch request. finish is called exactly
// once with the entry's own result.
type job[T any] struct {
	ctx    context.Context
	v      T
	size   int
	finish func(error)
}

// batcher gathers entries from concurrent callers into batch requests of
// up to maxBatchEntries entries and maxBytes bytes, with at most
// maxInflight requests at a time. It adds no delay: the first entry goes out
// at once, and entries that arrive while requests are in flight form the
// next batches. Requests run on goroutines that exist only while entries are
// pending, so a batcher needs no closing.
type batcher[T any] struct {
	maxInflight int
	maxEntries  int
	maxBytes    int
	timeout     time.Duration // per request
	send        func(ctx context.Context, batch []*job[T])

	mu       sync.Mutex
	pending  []*job[T]
	inflight int
}

func newBatcher[T any](maxInflight, maxBytes int, timeout time.Duration, send func(context.Context, []*job[T])) *batcher[T] {
	return &batcher[T]{maxInflight: maxInflight, maxEntries: maxBatchEntries, maxBytes: maxBytes, timeout: timeout, send: send}
}

// submit queues jobs; each one's finish is called when its request is done.
func (b *batcher[T]) submit(jobs ...*job[T]) {
	b.mu.Lock()
	b.pending = append(b.pending, jobs...)
	need := (len(b.pending) + b.maxEntries - 1) / b.maxEntries
	start := min(need, b.maxInflight-b.inflight)
	b.inflight += max(start, 0)
	b.mu.Unlock()
	for i := 0; i < start; i++ {
		go b.run()
	}
}

// do submits one entry and waits for its result, or for ctx.
func (b *batcher[T]) do(ctx context.Context, v T, size int) error {
	done := make(chan error, 1)
	b.submit(&job[T]{ctx: ctx, v: v, size: size, finish: func(err error) { done <- err }})
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *batcher[T]) run() {
	for {
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.inflight--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()

		live := batch[:0]
		for _, j := range batch {
			if err := j.ctx.Err(); err != nil {
				j.finish(err) // its caller gave up before it was sent
				continue
			}
			live = append(live, j)
		}
		if len(live) == 0 {
			continue
		}
		// The request outlives no caller's patience by more than timeout,
		// and one caller giving up does not abort the others' entries.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(live[0].ctx), b.timeout)
		b.send(ctx, live)
		cancel()
	}
}

// take removes the next batch from pending. b.mu is held.
func (b *batcher[T]) take() []*job[T] {
	n, bytes := 0, 0
	for n < len(b.pending) && n < b.maxEntries {
		s := b.pending[n].size
		if n > 0 && b.maxBytes > 0 && bytes+s > b.maxBytes {
			break
		}
		bytes += s
		n++
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
