package sqs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// publishInflight is how many batch requests one destination has in flight
// at once (1 for FIFO destinations, to keep their order).
const publishInflight = 16

// batchIDs are the entry IDs of a batch request: the entry's index.
var batchIDs = func() (ids [maxBatchEntries]string) {
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return ids
}()

// NewPublisher returns a publisher. It sends through SendMessageBatch (or
// SNS PublishBatch in fan-out mode), gathering the messages of concurrent
// Publish calls to the same topic into batches of up to 10 entries and
// 256 KiB.
func (b *Broker) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	return &Publisher{b: b, abort: make(chan struct{})}, nil
}

// Publisher sends to SQS queues, or SNS topics in fan-out mode. It is safe
// for concurrent use.
type Publisher struct {
	b      *Broker
	abort  chan struct{} // closed when Close gives up waiting for Publish calls
	mu     sync.Mutex
	closed bool
	active int           // Publish calls under way
	idle   chan struct{} // closed when the last one ends after Close
}

// Publish sends msgs to topic (a queue name or URL; in fan-out mode an SNS
// topic name or ARN) and returns once SQS (or SNS) has accepted every one,
// or with a *driver.PublishError naming the entries it refused. A message
// whose encoding (body, base64 for a binary payload, plus attributes) is
// over the wire limit fails the whole call before any request. Publish
// creates nothing: a queue (in fan-out mode, an SNS topic) that does not
// exist is a NotFound error matching driver.ErrNoGroup.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*driver.Message) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return driver.ErrClosed
	}
	p.active++
	p.mu.Unlock()
	defer p.leave()
	return p.b.publish(ctx, "sqs: publish", topic, msgs, p.abort)
}

func (p *Publisher) leave() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active--
	if p.active == 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
}

// publish encodes msgs, checks them against the wire limit, and sends
// them to topic through its batcher, waiting for every result (or for ctx,
// or abort).
func (b *Broker) publish(ctx context.Context, op, topic string, msgs []*driver.Message, abort <-chan struct{}) error {
	if len(msgs) == 0 {
		return nil
	}
	fifo := b.fifo(topic)
	wire := b.wireLimit()
	encs := make([]encoded, len(msgs))
	for i, m := range msgs {
		encs[i] = encode(m, fifo)
		if encs[i].size > wire {
			return &driver.Error{Kind: semantics.InvalidArgument, Op: op, Err: &driver.TooLargeError{ID: m.ID, Size: encs[i].size, Max: wire}}
		}
	}
	snd, err := b.sender(ctx, topic)
	if err != nil {
		return err
	}
	c := &call{remaining: len(msgs), done: make(chan struct{})}
	jobs := make([]*job[*encoded], len(msgs))
	for i := range msgs {
		jobs[i] = &job[*encoded]{ctx: ctx, v: &encs[i], size: encs[i].size, finish: c.finisher(i, msgs[i].ID)}
	}
	if err := snd.submitAndWait(ctx, jobs, c.done, abort); err != nil {
		return driver.WrapError(semantics.Transient, op, err)
	}
	return c.result()
}

// Close lets the Publish calls under way finish (their messages are in
// requests to SQS already; nothing else is buffered), waiting no longer
// than ctx. When ctx ends first, Close returns ctx's error; a Publish
// sending its request itself still ends when SQS answers (within
// Options.RequestTimeout), and one waiting for a request that another
// caller sends returns at once with an error of kind Closed (its messages
// may or may not have been accepted). Publish after Close returns
// driver.ErrClosed.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed || p.active == 0 {
		p.closed = true
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.idle = make(chan struct{})
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		close(p.abort)
		return driver.WrapError(semantics.Canceled, "sqs: close publisher", fmt.Errorf("publishes still under way were abandoned: %w", ctx.Err()))
	}
}

// call collects the per-message results of one Publish.
type call struct {
	mu        sync.Mutex
	remaining int
	failed    []driver.PublishFailure
	done      chan struct{}
}

func (c *call) finisher(index int, id string) func(error) {
	return func(err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if err != nil {
			c.failed = append(c.failed, driver.PublishFailure{Index: index, ID: id, Err: err})
		}
		c.remaining--
		if c.remaining == 0 {
			close(c.done)
		}
	}
}

func (c *call) result() error {
	if len(c.failed) == 0 {
		return nil
	}
	sort.Slice(c.failed, func(i, j int) bool { return c.failed[i].Index < c.failed[j].Index })
	return &driver.PublishError{Failed: c.failed}
}

// sender returns the batcher for topic, resolving its queue or SNS topic
// the first time. It creates nothing: a missing one is an error matching
// driver.ErrNoGroup.
func (b *Broker) sender(ctx context.Context, topic string) (*batcher[*encoded], error) {
	b.mu.Lock()
	s := b.senders[topic]
	b.mu.Unlock()
	if s != nil {
		return s, nil
	}
	inflight := publishInflight
	if b.fifo(topic) {
		inflight = 1 // one request at a time keeps a FIFO topic's order
	}
	batchBytes := max(maxBatchBytes, b.opts.MaxMessageSize)
	if b.sns != nil {
		name := TopicName(topic, b.opts.FIFO)
		arn, err := b.existingTopic(ctx, name)
		if err != nil {
			return nil, err
		}
		s = newBatcher(inflight, batchBytes, b.opts.RequestTimeout, b.publishSNS(topic, name, arn))
		if b.fifo(topic) {
			// PublishBatch goes out in the query protocol, whose
			// parameters the SDK sorts by name, so entry 10 comes right
			// after entry 1; an emulator that takes entries in parameter
			// order (fauxqs does) would publish them out of order. Nine
			// entries keep a FIFO batch in order everywhere.
			s.maxEntries = maxBatchEntries - 1
		}
	} else {
		name := QueueName(topic, b.opts.FIFO)
		u, err := b.existingQueue(ctx, name)
		if err != nil {
			return nil, err
		}
		s = newBatcher(inflight, batchBytes, b.opts.RequestTimeout, b.sendSQS(topic, name, u))
	}
	b.mu.Lock()
	if existing := b.senders[topic]; existing != nil {
		s = existing
	} else {
		b.senders[topic] = s
	}
	b.mu.Unlock()
	return s, nil
}

// dropSender forgets topic's batcher and names after its queue or topic
// was found missing, so that the next Publish resolves it again.
func (b *Broker) dropSender(topic, name string) {
	b.mu.Lock()
	delete(b.senders, topic)
	b.mu.Unlock()
	b.forget(name)
}

func (b *Broker) sendSQS(topic, name, queueURL string) func(context.Context, []*job[*encoded]) {
	const op = "sqs: publish"
	return func(ctx context.Context, batch []*job[*encoded]) {
		entries := make([]types.SendMessageBatchRequestEntry, len(batch))
		for i, j := range batch {
			e := j.v
			entries[i] = types.SendMessageBatchRequestEntry{Id: &batchIDs[i], MessageBody: &e.body, MessageAttributes: e.attrs}
			if !e.deliverAt.IsZero() {
				entries[i].DelaySeconds = delaySeconds(e.deliverAt)
			}
			if e.group != "" {
				entries[i].MessageGroupId = &e.group
				entries[i].MessageDeduplicationId = &e.dedup
			}
		}
		out, err := b.client.SendMessageBatch(ctx, &awssqs.SendMessageBatchInput{QueueUrl: &queueURL, Entries: entries})
		if err != nil {
			if kindOf(err) == semantics.NotFound {
				b.dropSender(topic, name)
				err = errors.Join(noGroup(op, "queue %s no longer exists", name), err)
			}
			finishAll(batch, wrap(op, err))
			return
		}
		finishBatch(op, batch, sqsResults(op, out.Successful, func(e types.SendMessageBatchResultEntry) *string { return e.Id }, out.Failed))
	}
}

// delaySeconds is SQS's per-message delay for a message due at: the time
// left, rounded up to whole seconds (SQS counts seconds: never early), 0 when
// it is due, at most 900 (package broker refuses longer ones: MaxDelay).
func delaySeconds(at time.Time) int32 {
	left := time.Until(at)
	if left <= 0 {
		return 0
	}
	return int32(min((left+time.Second-1)/time.Second, 900))
}

// sqsResults lists the outcome of every entry of an SQS batch response.
func sqsResults[S any](op string, ok []S, id func(S) *string, failed []types.BatchResultErrorEntry) []entryResult {
	results := make([]entryResult, 0, len(ok)+len(failed))
	for _, s := range ok {
		results = append(results, entryResult{id: aws.ToString(id(s))})
	}
	for _, f := range failed {
		results = append(results, entryResult{id: aws.ToString(f.Id), err: entryError(op, aws.ToString(f.Code), aws.ToString(f.Message), f.SenderFault)})
	}
	return results
}

func (b *Broker) publishSNS(topic, name, topicARN string) func(context.Context, []*job[*encoded]) {
	const op = "sqs: publish to SNS"
	return func(ctx context.Context, batch []*job[*encoded]) {
		entries := make([]snstypes.PublishBatchRequestEntry, len(batch))
		for i, j := range batch {
			e := j.v
			attrs := make(map[string]snstypes.MessageAttributeValue, len(e.attrs))
			for k, v := range e.attrs {
				attrs[k] = snstypes.MessageAttributeValue{DataType: v.DataType, StringValue: v.StringValue, BinaryValue: v.BinaryValue}
			}
			entries[i] = snstypes.PublishBatchRequestEntry{Id: &batchIDs[i], Message: &e.body, MessageAttributes: attrs}
			if e.group != "" {
				entries[i].MessageGroupId = &e.group
				entries[i].MessageDeduplicationId = &e.dedup
			}
		}
		out, err := b.sns.PublishBatch(ctx, &sns.PublishBatchInput{TopicArn: &topicARN, PublishBatchRequestEntries: entries})
		if err != nil {
			if kindOf(err) == semantics.NotFound {
				b.dropSender(topic, name)
				err = errors.Join(noGroup(op, "SNS topic %s no longer exists", name), err)
			}
			finishAll(batch, wrap(op, err))
			return
		}
		results := make([]entryResult, 0, len(batch))
		for _, s := range out.Successful {
			results = append(results, entryResult{id: aws.ToString(s.Id)})
		}
		for _, f := range out.Failed {
			results = append(results, entryResult{id: aws.ToString(f.Id), err: entryError(op, aws.ToString(f.Code), aws.ToString(f.Message), f.SenderFault)})
		}
		finishBatch(op, batch, results)
	}
}

// entryResult is the outcome of one entry of a batch response.
type entryResult struct {
	id  string // the entry's index, as sent
	err error
}

// finishBatch finishes every job of batch with its entry's result; a job
// that the response does not mention fails.
func finishBatch[T any](op string, batch []*job[T], results []entryResult) {
	var done [maxBatchEntries]bool
	for _, r := range results {
		i, err := strconv.Atoi(r.id)
		if err != nil || i < 0 || i >= len(batch) || done[i] {
			continue
		}
		done[i] = true
		batch[i].finish(r.err)
	}
	for i, j := range batch {
		if !done[i] {
			j.finish(driver.Errorf(semantics.Transient, op, "the batch response has no result for this entry"))
		}
	}
}

func finishAll[T any](batch []*job[T], err error) {
	for _, j := range batch {
		j.finish(err)
	}
}

// As sets target, a **sqs.Client or (fan-out mode) a **sns.Client, to the
// SDK client the publisher sends with.
func (p *Publisher) As(target any) bool { return p.b.As(target) }
