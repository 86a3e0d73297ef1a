package sqs

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// headerRedrives counts how many times a message was redriven: the header
// that middleware/dlq's Redrive (and so `queuekit redrive`) maintains too.
const headerRedrives = driver.HeaderPrefix + "redrives"

// Redrive's retry of transient errors.
const (
	defaultRedriveRetries = 5
	redriveBackoff        = 100 * time.Millisecond
	maxRedriveBackoff     = 5 * time.Second
)

// RedriveOptions tune Redrive.
type RedriveOptions struct {
	// Max is the most messages to move; 0 means as many as the
	// dead-letter queue held (visible) when Redrive started, so that
	// messages that fail again and come back are not moved in a loop.
	Max int
	// VisibilityTimeout hides each message being moved from other
	// consumers of the dead-letter queue; default 30s. It is also how
	// long Redrive waits for the messages of a receive whose answer it
	// lost to be visible again.
	VisibilityTimeout time.Duration
	// Retries is how many times in a row a request that failed with a
	// transient error (throttling, a connection cut mid-answer) is tried
	// again, after 100ms, then twice as long each time up to 5s; default 5.
	// Negative: never.
	Retries int
}

// RedriveResult says what Redrive did and what it left behind.
type RedriveResult struct {
	// Moved messages were sent to the source queue and then deleted from
	// the dead-letter queue.
	Moved int
	// Left is the dead-letter queue's depth when Redrive returned, as SQS
	// approximates it (-1 each when it could not be read): Visible
	// messages were not moved (over Max, refused, or arrived meanwhile);
	// InFlight ones are hidden from Redrive, received by another consumer
	// or by an earlier run that was killed, and are visible again — to be
	// redriven by another run — when their visibility timeout ends.
	Left Depth
}

// Done reports whether the dead-letter queue was left empty.
func (r RedriveResult) Done() bool { return r.Left.Total() == 0 }

// Redrive moves messages from dead-letter queue dlq back to queue source
// (each a queue name or URL), ten at a time, and deletes each from dlq only
// after SQS accepted its send, so a message is never in neither queue (a
// failure between the two leaves it in both: at least once).
//
// A moved message keeps its body, ID, key and headers, as `queuekit
// redrive` (middleware/dlq.Redrive) does: it loses the dead-letter headers
// (queuekit-dead-reason, -dead-attempts, -original-topic, -last-failure),
// gets a new queuekit-published-at (the time of the redrive) and counts
// the redrive in queuekit-redrives. A message from another producer (no
// queuekit-id attribute) keeps its body and attributes and gains
// queuekit-redrives where it has fewer than 10 attributes. On a FIFO
// source the message keeps its MessageGroupId and gets a fresh
// MessageDeduplicationId, so that the queue's five-minute deduplication
// does not drop it.
//
// Transient failures (throttling, a connection cut, even one that loses
// the answer of a receive and so hides its messages for the visibility
// timeout) are retried with backoff, up to opts.Retries times in a row;
// Redrive waits for the messages of a lost receive to come back. A
// message whose send SQS refuses stays in dlq, visible again at once, and
// Redrive stops with the error. The result says how many messages moved
// and how many are left in dlq, visible or in flight: a run that returns
// nil has moved what it could see, and Left.InFlight messages need another
// run once their visibility timeout ends.
func (b *Broker) Redrive(ctx context.Context, dlq, source string, opts RedriveOptions) (RedriveResult, error) {
	const op = "sqs: redrive"
	if opts.Max < 0 || opts.VisibilityTimeout < 0 {
		return RedriveResult{}, driver.Errorf(semantics.InvalidArgument, op, "Max and VisibilityTimeout must not be negative")
	}
	r := &redriver{b: b, ctx: ctx, retries: opts.Retries, vis: DefaultVisibilityTimeout}
	if opts.Retries == 0 {
		r.retries = defaultRedriveRetries
	}
	if opts.VisibilityTimeout > 0 {
		r.vis = opts.VisibilityTimeout
	}
	var res RedriveResult
	err := r.run(dlq, source, opts.Max, &res)
	// Left is read even when ctx is over: the caller needs to know.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.opts.RequestTimeout)
	defer cancel()
	res.Left = Depth{Visible: -1, InFlight: -1, Delayed: -1}
	if r.dlqURL != "" {
		_ = r.retry(func() error {
			d, err := b.QueueDepth(lctx, r.dlqURL)
			if err == nil {
				res.Left = d
			}
			return err
		})
	}
	if err != nil && ctx.Err() != nil {
		return res, driver.Canceled(op, ctx.Err())
	}
	return res, err
}

// redriver is one Redrive run.
type redriver struct {
	b       *Broker
	ctx     context.Context
	retries int
	vis     time.Duration

	dlqURL, srcURL string
	fifo           bool
	// lostUntil is when the messages of the receives whose answer was
	// lost are visible again at the latest.
	lostUntil time.Time
}

func (r *redriver) run(dlq, source string, max int, res *RedriveResult) error {
	const op = "sqs: redrive"
	if err := r.retry(func() (err error) { r.dlqURL, err = r.b.existingQueue(r.ctx, dlq); return err }); err != nil {
		return err
	}
	if err := r.retry(func() (err error) { r.srcURL, err = r.b.existingQueue(r.ctx, source); return err }); err != nil {
		return err
	}
	r.fifo = strings.HasSuffix(r.srcURL, fifoSuffix)
	limit := max
	if limit == 0 {
		var d Depth
		if err := r.retry(func() (err error) { d, err = r.b.QueueDepth(r.ctx, r.dlqURL); return err }); err != nil {
			return err
		}
		limit = int(d.Visible)
	}
	visSecs := ceilSeconds(r.vis, 1, maxVisibilitySecs)
	for res.Moved < limit {
		// While messages of a lost receive are hidden, long-poll for them.
		var wait int32
		if until := time.Until(r.lostUntil); until > 0 {
			wait = ceilSeconds(min(until, maxWaitTime), 1, int32(maxWaitTime/time.Second))
		}
		var msgs []types.Message
		err := r.retry(func() error {
			sent := time.Now()
			out, err := r.b.client.ReceiveMessage(r.ctx, &awssqs.ReceiveMessageInput{
				QueueUrl:                    &r.dlqURL,
				MaxNumberOfMessages:         int32(min(limit-res.Moved, maxBatchEntries)),
				VisibilityTimeout:           visSecs,
				WaitTimeSeconds:             wait,
				MessageAttributeNames:       []string{"All"},
				MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameMessageGroupId},
			})
			if err != nil {
				// SQS may have handed out messages in the lost answer:
				// they are hidden for the visibility timeout.
				if until := sent.Add(time.Duration(visSecs) * time.Second); until.After(r.lostUntil) {
					r.lostUntil = until
				}
				return wrap(op+": receive from "+dlq, err)
			}
			msgs = out.Messages
			return nil
		})
		if err != nil {
			return err
		}
		if len(msgs) == 0 {
			if time.Now().Before(r.lostUntil) {
				continue
			}
			return nil
		}
		n, err := r.batch(msgs)
		res.Moved += n
		if err != nil {
			return err
		}
	}
	return nil
}

// retry runs call until it succeeds, fails with an error that is not
// transient, fails r.retries times in a row, or ctx ends, waiting with
// backoff in between.
func (r *redriver) retry(call func() error) error {
	backoff := redriveBackoff
	for try := 0; ; try++ {
		err := call()
		if err == nil || try >= r.retries || driver.KindOf(err) != semantics.Transient || r.ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			return err
		}
		backoff = min(2*backoff, maxRedriveBackoff)
	}
}

// batch sends msgs to the source queue, retrying transient failures, and
// deletes from the dead-letter queue those sent; the others are made
// visible there again.
func (r *redriver) batch(msgs []types.Message) (int, error) {
	const op = "sqs: redrive"
	entries := make([]types.SendMessageBatchRequestEntry, len(msgs))
	for i, m := range msgs {
		entries[i] = redriven(m, r.fifo)
		entries[i].Id = &batchIDs[i]
	}
	sent := make([]bool, len(msgs))
	var refused []error // for good: not sent
	pending := entries
	err := r.retry(func() error {
		out, err := r.b.client.SendMessageBatch(r.ctx, &awssqs.SendMessageBatchInput{QueueUrl: &r.srcURL, Entries: pending})
		if err != nil {
			return wrap(op+": send", err)
		}
		for _, s := range out.Successful {
			if i, err := strconv.Atoi(aws.ToString(s.Id)); err == nil && i >= 0 && i < len(msgs) {
				sent[i] = true
			}
		}
		var again []types.SendMessageBatchRequestEntry
		var transient error
		for _, f := range out.Failed {
			ferr := entryError(op+": send", aws.ToString(f.Code), aws.ToString(f.Message), f.SenderFault)
			i, aerr := strconv.Atoi(aws.ToString(f.Id))
			if aerr != nil || i < 0 || i >= len(msgs) {
				continue
			}
			if driver.KindOf(ferr) == semantics.Transient {
				again = append(again, entries[i])
				transient = ferr
			} else {
				refused = append(refused, ferr)
			}
		}
		pending = again
		return transient // retried with only the entries that may succeed
	})
	var sendErr error
	if err != nil {
		sendErr = err
	}
	sendErr = errors.Join(append([]error{sendErr}, refused...)...)

	var del []types.DeleteMessageBatchRequestEntry
	var back []types.ChangeMessageVisibilityBatchRequestEntry
	for i, m := range msgs {
		if sent[i] {
			del = append(del, types.DeleteMessageBatchRequestEntry{Id: &batchIDs[i], ReceiptHandle: m.ReceiptHandle})
		} else {
			back = append(back, types.ChangeMessageVisibilityBatchRequestEntry{Id: &batchIDs[i], ReceiptHandle: m.ReceiptHandle})
		}
	}
	if len(back) > 0 {
		// Not sent: make them visible in the dead-letter queue again now.
		_ = r.retry(func() error {
			_, err := r.b.client.ChangeMessageVisibilityBatch(context.WithoutCancel(r.ctx), &awssqs.ChangeMessageVisibilityBatchInput{QueueUrl: &r.dlqURL, Entries: back})
			return wrap(op, err)
		})
	}
	moved := 0
	var delErr error
	for len(del) > 0 {
		var again []types.DeleteMessageBatchRequestEntry
		err := r.retry(func() error {
			dout, err := r.b.client.DeleteMessageBatch(r.ctx, &awssqs.DeleteMessageBatchInput{QueueUrl: &r.dlqURL, Entries: del})
			if err != nil {
				return wrap(op+": delete from the dead-letter queue after sending (the sent copies are in the source queue; these stay in the dead-letter queue too)", err)
			}
			moved += len(dout.Successful)
			for _, f := range dout.Failed {
				ferr := entryError(op+": delete", aws.ToString(f.Code), aws.ToString(f.Message), f.SenderFault)
				if driver.KindOf(ferr) == semantics.Transient {
					for _, e := range del {
						if aws.ToString(e.Id) == aws.ToString(f.Id) {
							again = append(again, e)
						}
					}
				} else {
					delErr = errors.Join(delErr, ferr)
				}
			}
			return nil
		})
		if err != nil {
			delErr = errors.Join(delErr, err)
			break
		}
		if len(again) == len(del) {
			delErr = errors.Join(delErr, driver.Errorf(semantics.Transient, op+": delete", "%d deletes kept failing", len(again)))
			break
		}
		del = again
	}
	if err := errors.Join(sendErr, delErr); err != nil {
		return moved, &driver.Error{Kind: kindOf(err), Op: op, Err: err}
	}
	return moved, nil
}

// redriven returns the entry that sends dead letter m back (see Redrive).
func redriven(m types.Message, fifo bool) types.SendMessageBatchRequestEntry {
	var e types.SendMessageBatchRequestEntry
	group := m.Attributes[string(types.MessageSystemAttributeNameMessageGroupId)]
	if msg, derr := decode(m, ""); derr == nil && hasAttr(m, AttrID) {
		for _, h := range []string{driver.HeaderDeadReason, driver.HeaderDeadAttempts, driver.HeaderOriginalTopic,
			driver.HeaderLastFailure, driver.HeaderAttempt} {
			delete(msg.Headers, h)
		}
		n, _ := strconv.Atoi(msg.Header(headerRedrives))
		msg.SetHeader(headerRedrives, strconv.Itoa(n+1))
		msg.PublishedAt = time.Now()
		enc := encode(msg, fifo)
		e.MessageBody, e.MessageAttributes = &enc.body, enc.attrs
		if group == "" {
			group = enc.group
		}
	} else {
		// Another producer's message (or one whose queuekit attributes
		// do not decode): as it was, plus the redrive count where it fits.
		e.MessageBody, e.MessageAttributes = m.Body, m.MessageAttributes
		if len(m.MessageAttributes) < MaxAttributes {
			n, _ := strconv.Atoi(attrString(m.MessageAttributes, headerRedrives))
			attrs := make(map[string]types.MessageAttributeValue, len(m.MessageAttributes)+1)
			for k, v := range m.MessageAttributes {
				attrs[k] = v
			}
			attrs[headerRedrives] = types.MessageAttributeValue{DataType: aws.String(dtString), StringValue: aws.String(strconv.Itoa(n + 1))}
			e.MessageAttributes = attrs
		}
	}
	if fifo {
		if group == "" {
			group = aws.ToString(m.MessageId)
		}
		e.MessageGroupId = aws.String(group)
		// Fresh, so that the five-minute deduplication does not drop it;
		// the same on every retry of the send, so that those are dropped.
		e.MessageDeduplicationId = aws.String(driver.NewID())
	}
	return e
}

func hasAttr(m types.Message, name string) bool {
	_, ok := m.MessageAttributes[name]
	return ok
}
