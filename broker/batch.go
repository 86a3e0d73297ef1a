package broker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// BatchHandler handles several messages in one call: one database round
// trip or one bulk request for the lot, where a Handler would make one per
// message.
type BatchHandler interface {
	// HandleBatch handles msgs, given in delivery order, and returns one
	// result per message, in the same order: nil acknowledges the message
	// (under at-least-once), an error asks for its redelivery, after
	// RetryAfter's delay when the error carries one. A nil slice means
	// that every message succeeded; FailAll fails them all. Results are
	// matched to messages by position, so HandleBatch must not reorder
	// msgs, and the slice is reused once it returns (the messages are
	// not).
	HandleBatch(ctx context.Context, msgs []*Message) []error
}

// BatchHandlerFunc adapts a function to BatchHandler.
type BatchHandlerFunc func(ctx context.Context, msgs []*Message) []error

// HandleBatch calls f.
func (f BatchHandlerFunc) HandleBatch(ctx context.Context, msgs []*Message) []error {
	return f(ctx, msgs)
}

// FailAll returns the result of a batch of n messages that all failed with
// err, for a BatchHandler whose one write for the batch failed.
func FailAll(n int, err error) []error {
	res := make([]error, n)
	for i := range res {
		res[i] = err
	}
	return res
}

// BatchOptions configure ConsumeBatch. The zero value handles one batch at a
// time, of up to 100 messages, made of what has arrived.
type BatchOptions struct {
	// ConsumeOptions apply as they do to Consume, with Concurrency
	// counting batches handled at once.
	ConsumeOptions
	// MaxBatch is the most messages in one batch; default 100.
	MaxBatch int
	// MaxWait is how long a batch that is not full may wait for more
	// messages, from its first one; default 0: a batch is what has been
	// received when a handler is free (under load batches fill up by
	// themselves). Keep MaxWait plus the time a batch takes well under the
	// subscription's AckTimeout.
	MaxWait time.Duration
}

// DefaultMaxBatch is BatchOptions.MaxBatch's default.
const DefaultMaxBatch = 100

// ConsumeBatch is Consume for a BatchHandler: it receives from sub (in
// batches where the adapter can), hands the handler up to MaxBatch messages
// at a time, and settles each message by its own result, under the guarantee
// and ordering sub was declared with:
//
//   - AtLeastOnce: each message whose result is nil is acked, each other is
//     nacked (after RetryAfter's delay, or NackDelay); a panic fails the
//     whole batch.
//   - AtMostOnce: every message is acked before the batch runs; one whose
//     ack fails is left out of it; nothing is retried.
//   - EffectivelyOnce: each message's ID is claimed in the idempotency
//     store before the batch runs, with Idempotent's semantics message by
//     message: a message handled already is acked without being handed to
//     the handler, one whose other copy is in flight comes back later
//     (InFlightDelay), and after the batch each claim is completed (result
//     nil) or released (error). The claims are taken one by one before the
//     batch and settled one by one after it, so the lease
//     (IdempotencyOptions.Lease) must outlast the whole batch, and a crash
//     during the batch leaves every one of its messages to be handled
//     again once the leases expire: the handler's writes for a batch are
//     best made idempotent or transactional (an inbox table written in the
//     batch's transaction closes the gap).
//
// With PerKey ordering a key is never in two batches at once: the key's
// messages go to the batch that holds it, in delivery order, or wait for it
// to end. A key's results count in order up to its first failure: that
// message and the key's later messages of the batch are not acked, but
// handed to the handler again, in order, after the failed message's nack
// delay (with Attempt one higher), in batches of their own while other keys
// go on; the key's messages that follow wait. A message whose Attempt has
// reached the subscription's MaxAttempts when it fails is given back to the
// broker instead (nacked, to be dead-lettered) and the key's later messages
// go on without it; at shutdown they are all nacked. A handler that must not
// handle a key's message before the earlier ones succeeded returns an error
// for the key's later messages after a failure; under EffectivelyOnce a
// later message reported handled is recorded so, and skipped when it comes
// round again.
//
// Shutdown is Consume's: when ctx is cancelled ConsumeBatch stops receiving,
// lets the batches already running finish (see ShutdownTimeout) and settles
// them, nacks what it had received but not started, and returns nil; it
// returns an error when sub fails with anything but a transient error.
// Per-message middleware does not apply to a BatchHandler; dead-lettering is
// the broker's (SubscriberOptions.MaxAttempts).
func ConsumeBatch(ctx context.Context, sub *Subscriber, h BatchHandler, opts BatchOptions) error {
	const op = "queuekit: consume batch"
	if isNil(h) {
		return Errorf(semantics.InvalidArgument, op, "subscriber and handler are required (a nil BatchHandlerFunc too)")
	}
	if opts.MaxBatch < 0 || opts.MaxWait < 0 {
		return Errorf(semantics.InvalidArgument, op, "MaxBatch and MaxWait must not be negative")
	}
	if opts.MaxBatch == 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	rc, err := startRun(ctx, op, sub, &opts.ConsumeOptions)
	if err != nil {
		return err
	}
	defer rc.end()
	b := &batcher{run: rc, h: h, opts: opts}
	if rc.guarantee == semantics.EffectivelyOnce {
		b.idem = newBatchIdempotency(opts.Idempotency, opts.IdempotencyOptions)
	}
	return b.start(ctx)
}

// batcher runs ConsumeBatch: a receive goroutine keeps up to limit
// deliveries ready, and Concurrency workers each take a batch of them,
// handle it and settle it. With MaxWait, one worker at a time (the
// collector) waits for its batch to fill while the others stay idle, so
// that batches are not split between them.
type batcher struct {
	*run
	h    BatchHandler
	opts BatchOptions
	idem *batchIdempotency // EffectivelyOnce

	mu        sync.Mutex
	ready     itemRing
	keys      *keyTable // PerKey with Concurrency > 1
	held      int       // deliveries in ready or waiting behind their key
	limit     int
	recvDone  bool
	err       error
	idle      waitList
	collector chan struct{} // wakes the collecting worker; nil when none
	roomWake  chan struct{} // wakes the receive goroutine waiting for room
	roomWait  bool
	wg        sync.WaitGroup
}

// batch is one worker's batch, reused from one to the next.
type batch struct {
	items []item
	msgs  []*Message
}

func (b *batcher) start(ctx context.Context) error {
	n := b.opts.Concurrency
	b.limit = max(16, b.opts.MaxBatch*n)
	if b.ordering == semantics.PerKey && n > 1 {
		b.keys = newKeyTable()
	}
	b.roomWake = make(chan struct{}, 1)
	b.wg.Add(n + 1)
	go func() {
		defer b.wg.Done()
		b.receiveLoop(ctx)
	}()
	for range n {
		go func() {
			defer b.wg.Done()
			b.work()
		}()
	}
	b.wg.Wait()
	return b.err
}

// receiveLoop keeps up to limit deliveries ready until ctx is done or sub
// fails for good.
func (b *batcher) receiveLoop(ctx context.Context) {
	buf := make([]driver.Delivery, min(b.limit, max(16, b.opts.MaxBatch)))
	backoff := 10 * time.Millisecond
	for {
		if ctx.Err() != nil {
			// Stopping: receive nothing more (a delivery received now would
			// only be given back, costing it an attempt).
			b.endReceiving(nil)
			return
		}
		b.mu.Lock()
		if b.held >= b.limit {
			b.roomWait = true
			b.mu.Unlock()
			select {
			case <-b.roomWake:
			case <-ctx.Done():
			}
			continue
		}
		room := min(len(buf), b.limit-b.held)
		b.mu.Unlock()
		n, err := b.sub.receiveBatch(ctx, buf[:room])
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			if KindOf(err) != semantics.Transient {
				b.endReceiving(WrapError(semantics.Unknown, "queuekit: consume batch: receive", err))
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		b.mu.Lock()
		for i, d := range buf[:n] {
			buf[i] = nil
			b.ready.pushBack(newItem(d, b.keys))
		}
		b.held += n
		b.kickLocked()
		b.mu.Unlock()
	}
}

// endReceiving records that nothing more will be received, and why.
func (b *batcher) endReceiving(err error) {
	b.mu.Lock()
	b.recvDone, b.err = true, err
	b.idle.wakeAll()
	b.wakeCollectorLocked()
	b.mu.Unlock()
}

// kickLocked wakes the collector when there are deliveries for it, or else
// an idle worker.
func (b *batcher) kickLocked() {
	if b.ready.n == 0 {
		return
	}
	if b.collector != nil {
		b.wakeCollectorLocked()
	} else if b.idle.len() > 0 {
		b.idle.wakeOne()
	}
}

func (b *batcher) wakeCollectorLocked() {
	if b.collector != nil {
		select {
		case b.collector <- struct{}{}:
		default: // it has a signal waiting already
		}
	}
}

// work takes batches and handles them until receiving is over and nothing
// is left.
func (b *batcher) work() {
	wake := make(chan struct{}, 1)
	var timer *time.Timer
	bt := &batch{}
	b.mu.Lock()
	for {
		if b.collector == nil {
			b.takeLocked(bt)
		}
		if len(bt.items) == 0 {
			if b.recvDone && b.ready.n == 0 {
				// What waits behind a key is taken by the worker whose
				// batch holds the key, once it lets the key go.
				b.idle.wakeAll()
				b.mu.Unlock()
				return
			}
			b.idle.add(wake)
			b.mu.Unlock()
			<-wake
			b.mu.Lock()
			continue
		}
		if len(bt.items) < b.opts.MaxBatch && b.opts.MaxWait > 0 && !b.recvDone {
			timer = b.collectLocked(bt, wake, timer)
		}
		b.kickLocked() // what is left is someone else's
		b.mu.Unlock()
		b.handle(bt)
		b.mu.Lock()
		b.finishLocked(bt)
	}
}

// collectLocked makes the caller the collector and adds to bt what arrives
// within MaxWait of now, until bt is full or receiving is over.
func (b *batcher) collectLocked(bt *batch, wake chan struct{}, timer *time.Timer) *time.Timer {
	b.collector = wake
	if timer == nil {
		timer = time.NewTimer(b.opts.MaxWait)
	} else {
		timer.Reset(b.opts.MaxWait)
	}
	for len(bt.items) < b.opts.MaxBatch && !b.recvDone {
		b.mu.Unlock()
		expired := false
		select {
		case <-wake:
		case <-timer.C:
			expired = true
		}
		b.mu.Lock()
		b.takeLocked(bt)
		if expired {
			break
		}
	}
	timer.Stop()
	b.collector = nil
	select { // a signal sent to the collector is not for this worker now
	case <-wake:
	default:
	}
	if b.idle.len() > 0 {
		b.idle.wakeOne() // the next collector, or a worker for what is ready
	}
	return timer
}

// takeLocked moves ready deliveries into bt, up to MaxBatch: under PerKey
// those of keys free or held by bt (which it takes), the others behind
// their key.
func (b *batcher) takeLocked(bt *batch) {
	for b.ready.n > 0 && len(bt.items) < b.opts.MaxBatch {
		it := b.ready.popFront()
		if b.keys != nil && it.key != "" {
			i, held := b.keys.Find(it.key, it.hash)
			switch {
			case !held:
				b.keys.takeAt(i, it.key, it.hash).owner = bt
			case b.keys.At(i).Val.owner != bt:
				b.keys.At(i).Val.waiting.pushBack(it)
				continue
			}
		}
		b.held--
		bt.items = append(bt.items, it)
	}
	if b.roomWait && b.held < b.limit {
		b.roomWait = false
		b.roomWake <- struct{}{}
	}
}

// finishLocked lets bt's keys go and empties it.
func (b *batcher) finishLocked(bt *batch) {
	b.releaseKeysLocked(bt, bt.items)
	clear(bt.items)
	bt.items = bt.items[:0]
}

// releaseKeysLocked lets go the keys of its that bt holds: what waits behind
// each goes back to the front of the ready queue, in order.
func (b *batcher) releaseKeysLocked(bt *batch, its []item) {
	if b.keys == nil {
		return
	}
	for _, it := range its {
		if it.key == "" {
			continue
		}
		ks := b.keys.get(it.key, it.hash)
		if ks == nil || ks.owner != bt {
			continue // let go already
		}
		for i := ks.waiting.n - 1; i >= 0; i-- {
			b.ready.pushFront(ks.waiting.buf[(ks.waiting.head+i)&(len(ks.waiting.buf)-1)])
		}
		for ks.waiting.n > 0 {
			ks.waiting.popFront()
		}
		b.keys.drop(it.key, it.hash)
	}
	b.kickLocked()
}

// handle handles bt and settles each of its deliveries, or gives them back
// when ConsumeBatch is stopping.
func (b *batcher) handle(bt *batch) {
	if b.stopping() {
		for _, it := range bt.items {
			b.release(it.d) // received but not started: give it back
		}
		return
	}
	if b.guarantee == semantics.AtMostOnce {
		b.handleAtMostOnce(bt)
		return
	}
	res := b.call(bt, bt.items)
	if b.ordering != semantics.PerKey {
		for i, it := range bt.items {
			if res[i] == nil {
				b.ack(it.d, it.m)
			} else {
				b.nack(it.d, it.m, res[i])
			}
		}
		return
	}
	b.settleInOrder(bt, res)
}

// handleAtMostOnce acks every delivery of bt, then runs the handler on the
// messages whose ack succeeded.
func (b *batcher) handleAtMostOnce(bt *batch) {
	acked := bt.items[:0:0]
	for _, it := range bt.items {
		if !b.ackFirst(it.d, it.m) {
			continue
		}
		acked = append(acked, it)
	}
	if len(acked) == 0 {
		return
	}
	for i, err := range b.call(bt, acked) {
		if err != nil {
			b.onError(acked[i].m, err)
		}
	}
}

// settleInOrder settles bt under PerKey: for each key, the messages before
// its first failure are acked; that message and the key's later ones are
// handed to the handler again, in place, until they succeed (see
// ConsumeBatch). The keys that need no retry are let go at once.
func (b *batcher) settleInOrder(bt *batch, res []error) {
	rest, errs := b.settlePrefixes(bt.items, res)
	if len(rest) == 0 {
		return
	}
	retried := make(map[string]bool, len(rest))
	for _, it := range rest {
		retried[it.key] = true
	}
	done := make([]item, 0, len(bt.items)-len(rest))
	for _, it := range bt.items {
		if !retried[it.key] {
			done = append(done, it)
		}
	}
	b.mu.Lock()
	b.releaseKeysLocked(bt, done)
	b.mu.Unlock()

	backoff := minInPlaceDelay
	for len(rest) > 0 {
		// A key whose failed message used up its attempts gives it back
		// (to be dead-lettered) and goes on without it: its later
		// messages' results count.
		if b.maxAttempts > 0 {
			kept, keptErrs, gaveBack := rest[:0:0], errs[:0:0], false
			for i := range rest {
				if head := rest[i]; (i == 0 || rest[i-1].key != head.key) && head.m.Attempt >= b.maxAttempts {
					b.nack(head.d, head.m, errs[i])
					gaveBack = true
					continue
				}
				kept, keptErrs = append(kept, rest[i]), append(keptErrs, errs[i])
			}
			if gaveBack {
				rest, errs = b.settlePrefixes(kept, keptErrs)
				continue
			}
		}
		var delay time.Duration
		for i, err := range errs {
			if i > 0 && rest[i-1].key == rest[i].key {
				continue // a key's later messages follow its failed one
			}
			var d time.Duration
			d, backoff = b.inPlaceDelay(err, backoff)
			delay = max(delay, d)
		}
		for i, err := range errs {
			if i == 0 || rest[i-1].key != rest[i].key {
				b.onError(rest[i].m, fmt.Errorf("retrying in place after %v, with its key's %d later messages of the batch, to keep the key's order: %w", delay, countKey(rest, i)-1, err))
			}
		}
		if !b.sleep(delay) {
			for i, it := range rest {
				if i == 0 || rest[i-1].key != it.key {
					b.nack(it.d, it.m, errs[i])
				} else if err := b.settle(it.d, true, 0); err != nil && !errors.Is(err, ErrClosed) {
					b.onError(it.m, fmt.Errorf("giving back at shutdown, behind a failed message of its key: %w", err))
				}
			}
			return
		}
		for _, it := range rest {
			it.m.Attempt++
		}
		rest, errs = b.settlePrefixes(rest, b.call(bt, rest))
	}
}

// settlePrefixes acks each key's messages of its up to the key's first
// failure, and each keyless message that succeeded (a keyless failure is
// nacked). It returns the messages of each key from its first failure on,
// grouped by key and in order, with their results.
func (b *batcher) settlePrefixes(its []item, res []error) (rest []item, errs []error) {
	var failed map[string]bool
	var order []string // failed keys in the order of their failure
	for i, it := range its {
		switch {
		case it.key == "" && res[i] == nil:
			b.ack(it.d, it.m)
		case it.key == "":
			b.nack(it.d, it.m, res[i])
		case failed[it.key]:
		case res[i] == nil:
			b.ack(it.d, it.m)
		default:
			if failed == nil {
				failed = make(map[string]bool)
			}
			failed[it.key] = true
			order = append(order, it.key)
		}
	}
	for _, key := range order {
		in := false
		for i, it := range its {
			if it.key != key || !in && res[i] == nil {
				continue // another key's, or acked above
			}
			in = true
			rest, errs = append(rest, it), append(errs, res[i])
		}
	}
	return rest, errs
}

// countKey counts the messages of its from i on that share its[i]'s key
// (they are grouped).
func countKey(its []item, i int) int {
	n := 0
	for j := i; j < len(its) && its[j].key == its[i].key; j++ {
		n++
	}
	return n
}

// call runs the handler on its (after the idempotency step under
// EffectivelyOnce) and returns one result per item, turning a panic, or a
// result of the wrong length, into an error for each.
func (b *batcher) call(bt *batch, its []item) []error {
	bt.msgs = bt.msgs[:0]
	for _, it := range its {
		bt.msgs = append(bt.msgs, it.m)
	}
	if b.idem != nil {
		return b.idem.handle(b.hctx, bt.msgs, b.invoke)
	}
	return b.invoke(bt.msgs)
}

// invoke calls the handler once.
func (b *batcher) invoke(msgs []*Message) (res []error) {
	defer func() {
		if r := recover(); r != nil {
			res = FailAll(len(msgs), &PanicError{Value: r, Stack: debug.Stack()})
		}
	}()
	res = b.h.HandleBatch(b.hctx, msgs)
	switch len(res) {
	case len(msgs):
		return res
	case 0:
		if res == nil {
			return make([]error, len(msgs))
		}
	}
	return FailAll(len(msgs), fmt.Errorf("HandleBatch returned %d results for %d messages", len(res), len(msgs)))
}

// batchIdempotency is Idempotent's step for a batch: claims before it,
// completes or releases after it, message by message.
type batchIdempotency struct {
	store IdempotencyStore
	opts  IdempotencyOptions
	b     *storeBackoff
}

func newBatchIdempotency(store IdempotencyStore, opts IdempotencyOptions) *batchIdempotency {
	opts = opts.withDefaults() // Idempotent's
	return &batchIdempotency{store: store, opts: opts, b: opts.backoff()}
}

// handle claims each message, runs h on the claimed ones, and completes or
// releases each claim by its result.
func (x *batchIdempotency) handle(ctx context.Context, msgs []*Message, h func([]*Message) []error) []error {
	res := make([]error, len(msgs))
	keys := make([]string, len(msgs))
	tokens := make([]string, len(msgs))
	run := make([]*Message, 0, len(msgs))
	at := make([]int, 0, len(msgs)) // index in msgs of each message of run
	for i, m := range msgs {
		key := m.ID
		if x.opts.Key != nil {
			key = x.opts.Key(m)
		}
		keys[i] = key
		if key == "" {
			run, at = append(run, m), append(at, i)
			continue
		}
		claim, token, err := x.store.Claim(ctx, key, x.opts.Lease)
		switch {
		case err != nil:
			res[i] = RetryAfter(fmt.Errorf("idempotency claim %s: %w", key, err), x.b.failed())
		case claim == AlreadyDone:
			x.b.succeeded()
			if x.opts.OnDuplicate != nil {
				x.opts.OnDuplicate(m)
			}
		case claim == InFlight:
			x.b.succeeded()
			res[i] = RetryAfter(ErrInFlight, x.opts.InFlightDelay)
		default:
			tokens[i] = token
			run, at = append(run, m), append(at, i)
		}
	}
	if len(run) > 0 {
		for j, err := range h(run) {
			res[at[j]] = err
		}
	}
	sctx := newSettleContext(ctx, x.opts.Lease)
	defer sctx.cancel()
	for _, i := range at {
		if tokens[i] == "" {
			continue // no claim: a message without an idempotency key
		}
		key, token := keys[i], tokens[i]
		if herr := res[i]; herr != nil {
			if rerr := x.store.Release(sctx, key, token); rerr != nil {
				d := x.b.failed()
				if hd, ok := RetryDelay(herr); ok {
					d = max(d, hd)
				}
				res[i] = RetryAfter(errors.Join(herr, fmt.Errorf("idempotency release %s: %w", key, rerr)), d)
				continue
			}
			x.b.succeeded()
			continue
		}
		if cerr := x.store.Complete(sctx, key, token); cerr != nil {
			res[i] = RetryAfter(fmt.Errorf("idempotency complete %s: %w", key, cerr), x.b.failed())
			continue
		}
		x.b.succeeded()
	}
	return res
}
