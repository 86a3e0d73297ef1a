package kafka

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// ProcessorOptions configure an exactly-once consume-transform-produce loop.
// Topic, Group and TransactionalID are required.
type ProcessorOptions struct {
	// Topic to consume.
	Topic string
	// Group that consumes it; its offsets are committed in the same
	// transaction as the outputs.
	Group string
	// TransactionalID names this processor instance and must stay the same
	// across its restarts: a restarted instance fences its predecessor and
	// aborts the transaction the predecessor left open. Two live instances
	// need two IDs.
	TransactionalID string
	// MaxBatch bounds the input records per transaction; default 500.
	MaxBatch int
	// ClientOptions are applied last, after the Broker's (for example
	// kgo.SessionTimeout or kgo.TransactionTimeout).
	ClientOptions []kgo.Opt
}

// TransformFunc maps one consumed message to the messages to produce; each
// output goes to the topic its Topic field names (created like Publish
// creates topics). An error aborts the
// transaction: nothing of it is visible to read_committed consumers and its
// inputs are consumed again.
type TransformFunc func(ctx context.Context, in *broker.Message) ([]*broker.Message, error)

// Processor runs consume-transform-produce with Kafka transactions on a
// kgo.GroupTransactSession: each batch of input records, the outputs made
// from them and the group's offsets past them commit atomically, so that
// read_committed consumers of the outputs see every input's outputs exactly
// once — across crashes and rebalances, which abort the transaction in
// progress. Outputs carry the queuekit-id header like published messages.
type Processor struct {
	b     *Broker
	opts  ProcessorOptions
	sess  *kgo.GroupTransactSession
	mu    sync.Mutex
	close bool
}

// NewProcessor joins opts.Group on opts.Topic as a transactional client.
func (b *Broker) NewProcessor(ctx context.Context, opts ProcessorOptions) (*Processor, error) {
	const op = "kafka: new processor"
	switch {
	case opts.Topic == "" || opts.Group == "" || opts.TransactionalID == "":
		return nil, errf(semantics.InvalidArgument, op, "ProcessorOptions.Topic, Group and TransactionalID are required")
	case opts.MaxBatch < 0:
		return nil, errf(semantics.InvalidArgument, op, "ProcessorOptions.MaxBatch is %d, must be >= 0", opts.MaxBatch)
	case opts.MaxBatch == 0:
		opts.MaxBatch = 500
	}
	if err := checkTopic(op, opts.Topic); err != nil {
		return nil, err
	}
	if err := checkGroup(op, opts.Group); err != nil {
		return nil, err
	}
	if err := b.ensureTopics(ctx, opts.Topic); err != nil {
		return nil, wrap(op, err)
	}
	start := kgo.NewOffset().AtStart()
	if b.opts.StartOffset == Latest {
		start = kgo.NewOffset().AtEnd()
	}
	kopts := append(append([]kgo.Opt(nil), b.seedOpts...), b.producerDefaults()...)
	kopts = append(kopts,
		kgo.TransactionalID(opts.TransactionalID),
		kgo.ConsumerGroup(opts.Group),
		kgo.ConsumeTopics(opts.Topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(start),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.HeartbeatInterval(time.Second),
	)
	if b.opts.SessionTimeout > 0 {
		kopts = append(kopts, kgo.SessionTimeout(b.opts.SessionTimeout))
	}
	kopts = append(append(kopts, b.opts.ClientOptions...), opts.ClientOptions...)
	sess, err := kgo.NewGroupTransactSession(kopts...)
	if err != nil {
		return nil, errf(semantics.InvalidArgument, op, "%w", err)
	}
	return &Processor{b: b, opts: opts, sess: sess}, nil
}

// Session returns the underlying kgo.GroupTransactSession.
func (p *Processor) Session() *kgo.GroupTransactSession { return p.sess }

// Run consumes, transforms and produces in transactions until ctx is done
// (it then returns nil) or something fails: fn's error, a failed produce, or
// a transaction the broker would not end. The transaction in progress is
// aborted in every case, so its inputs are processed again by the next Run or
// the next member of the group.
func (p *Processor) Run(ctx context.Context, fn TransformFunc) error {
	const op = "kafka: process"
	if fn == nil {
		return errf(semantics.InvalidArgument, op, "TransformFunc is required")
	}
	for {
		fs := p.sess.PollRecords(ctx, p.opts.MaxBatch)
		if ctx.Err() != nil {
			return nil
		}
		if fs.IsClientClosed() {
			return broker.ErrClosed
		}
		var fetchErr error
		fs.EachError(func(_ string, _ int32, err error) {
			if kindOf(err) != semantics.Transient && fetchErr == nil {
				fetchErr = err
			}
		})
		if fetchErr != nil {
			return wrap(op, fetchErr)
		}
		if fs.Empty() {
			continue
		}
		if err := p.sess.Begin(); err != nil {
			return wrap(op, err)
		}
		failure := p.transform(ctx, fs, fn)
		stopping := ctx.Err() != nil
		commit := kgo.TryCommit
		if failure != nil || stopping {
			commit = kgo.TryAbort
		}
		// End even when ctx is done: the transaction must not stay open.
		committed, err := p.sess.End(context.WithoutCancel(ctx), commit)
		switch {
		case err != nil:
			return wrap(op, errors.Join(failure, err))
		case stopping:
			return nil
		case failure != nil:
			return wrap(op, failure)
		}
		_ = committed // not committed: a rebalance aborted the batch, which is consumed again
	}
}

// transform runs fn over the fetched records and produces the outputs into
// the open transaction, returning the first failure.
func (p *Processor) transform(ctx context.Context, fs kgo.Fetches, fn TransformFunc) error {
	var (
		mu      sync.Mutex
		failure error
		wg      sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if failure == nil {
			failure = err
		}
		mu.Unlock()
	}
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return failure != nil
	}
	iter := fs.RecordIter()
	for !iter.Done() && !failed() {
		r := iter.Next()
		var in broker.Message
		decodeRecord(r, &in, false)
		outs, err := fn(ctx, &in)
		if err != nil {
			fail(err)
			break
		}
		if err := driver.Prepare("kafka: process", outs, 0); err != nil {
			fail(err)
			break
		}
		for _, o := range outs {
			if err := checkTopic("kafka: process", o.Topic); err != nil {
				fail(errf(semantics.InvalidArgument, "kafka: process", "output %s of input %s: %w", o.ID, in.ID, err))
				break
			}
			if err := p.b.EnsureTopic(ctx, o.Topic); err != nil {
				fail(err)
				break
			}
		}
		if failed() {
			break
		}
		recs := toRecords("", outs)
		for i := range recs {
			wg.Add(1)
			p.sess.Produce(ctx, &recs[i], func(_ *kgo.Record, err error) {
				if err != nil {
					fail(err)
				}
				wg.Done()
			})
		}
	}
	wg.Wait()
	return failure
}

// Close leaves the group and closes the client; a transaction in progress
// is aborted. It waits no longer than ctx (the client keeps closing in the
// background). Closing twice returns nil.
func (p *Processor) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.close {
		p.mu.Unlock()
		return nil
	}
	p.close = true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		p.sess.Close()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errf(semantics.Transient, "kafka: close processor", "still leaving the group: %v", ctx.Err())
	}
}
