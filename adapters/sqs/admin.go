package sqs

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// QueueSpec describes a queue for EnsureQueue.
type QueueSpec struct {
	// FIFO makes it a FIFO queue (the name gets ".fifo" if it lacks it),
	// and its dead-letter queue too.
	FIFO bool
	// DeadLetterQueue, a queue name or URL, receives the messages received
	// MaxReceiveCount times without being deleted (the queue's
	// RedrivePolicy). It is created when missing. Empty: no dead-lettering.
	DeadLetterQueue string
	// MaxReceiveCount is the RedrivePolicy's maxReceiveCount: match it to
	// SubscriberOptions.MaxAttempts. Required (> 0) with DeadLetterQueue.
	MaxReceiveCount int
	// VisibilityTimeout, when > 0, is the queue's default visibility
	// timeout for a queue created here (subscribers pass their own on each
	// receive anyway).
	VisibilityTimeout time.Duration
}

// QueueInfo describes a queue that EnsureQueue made sure of.
type QueueInfo struct {
	URL, ARN string
	// Created reports whether EnsureQueue created the queue.
	Created bool
	// DeadLetterURL and DeadLetterARN name its dead-letter queue, if any.
	DeadLetterURL, DeadLetterARN string
}

// EnsureQueue makes sure queue name (a queue name or URL) exists as spec
// says, creating it (and its dead-letter queue) when missing unless the
// broker was opened with create=false, and sets its RedrivePolicy when
// spec names a dead-letter queue. NewSubscriber calls it with
// MaxReceiveCount = SubscriberOptions.MaxAttempts and DeadLetterQueue =
// DeadLetterQueue(opts).
func (b *Broker) EnsureQueue(ctx context.Context, name string, spec QueueSpec) (QueueInfo, error) {
	const op = "sqs: ensure queue"
	if spec.DeadLetterQueue != "" && spec.MaxReceiveCount <= 0 {
		return QueueInfo{}, broker.Errorf(semantics.InvalidArgument, op, "MaxReceiveCount must be > 0 with a DeadLetterQueue")
	}
	if name == "" {
		return QueueInfo{}, broker.Errorf(semantics.InvalidArgument, op, "queue name is empty")
	}
	if spec.FIFO && !isQueueURL(name) && !strings.HasSuffix(name, fifoSuffix) {
		name += fifoSuffix
	}
	var info QueueInfo
	var err error
	info.URL, info.Created, err = b.ensureQueue(ctx, name, spec.VisibilityTimeout)
	if err != nil {
		return QueueInfo{}, err
	}
	if info.ARN, err = b.queueARN(ctx, info.URL); err != nil {
		return QueueInfo{}, err
	}
	if spec.DeadLetterQueue == "" {
		return info, nil
	}
	dlq := spec.DeadLetterQueue
	if spec.FIFO && !isQueueURL(dlq) && !strings.HasSuffix(dlq, fifoSuffix) {
		dlq += fifoSuffix
	}
	if info.DeadLetterURL, _, err = b.ensureQueue(ctx, dlq, 0); err != nil {
		return QueueInfo{}, err
	}
	if info.DeadLetterARN, err = b.queueARN(ctx, info.DeadLetterURL); err != nil {
		return QueueInfo{}, err
	}
	policy, _ := json.Marshal(map[string]string{
		"deadLetterTargetArn": info.DeadLetterARN,
		"maxReceiveCount":     strconv.Itoa(spec.MaxReceiveCount),
	})
	_, err = b.client.SetQueueAttributes(ctx, &awssqs.SetQueueAttributesInput{
		QueueUrl:   &info.URL,
		Attributes: map[string]string{string(types.QueueAttributeNameRedrivePolicy): string(policy)},
	})
	if err != nil {
		return QueueInfo{}, wrap(op+": set RedrivePolicy", err)
	}
	return info, nil
}

// ensureQueue returns the URL of queue name, creating it when missing and
// allowed, and whether it did.
func (b *Broker) ensureQueue(ctx context.Context, name string, vis time.Duration) (string, bool, error) {
	if isQueueURL(name) {
		return name, false, nil
	}
	b.mu.Lock()
	u, ok := b.urls[name]
	b.mu.Unlock()
	if ok {
		return u, false, nil
	}
	created := false
	out, err := b.client.GetQueueUrl(ctx, &awssqs.GetQueueUrlInput{QueueName: aws.String(name)})
	switch {
	case err == nil:
		u = aws.ToString(out.QueueUrl)
	case kindOf(err) == semantics.NotFound && !b.opts.NoCreate:
		attrs := map[string]string{}
		if strings.HasSuffix(name, fifoSuffix) {
			attrs[string(types.QueueAttributeNameFifoQueue)] = "true"
		}
		if vis > 0 {
			attrs[string(types.QueueAttributeNameVisibilityTimeout)] = strconv.Itoa(int(ceilSeconds(vis, 0, maxVisibility)))
		}
		// 1 MiB, so that a binary payload of 256 KiB fits base64-encoded.
		attrs[string(types.QueueAttributeNameMaximumMessageSize)] = strconv.Itoa(WireLimit)
		cout, cerr := b.client.CreateQueue(ctx, &awssqs.CreateQueueInput{QueueName: aws.String(name), Attributes: attrs})
		if cerr != nil && kindOf(cerr) == semantics.InvalidArgument {
			// An endpoint from before SQS took 1 MiB: keep its default.
			delete(attrs, string(types.QueueAttributeNameMaximumMessageSize))
			cout, cerr = b.client.CreateQueue(ctx, &awssqs.CreateQueueInput{QueueName: aws.String(name), Attributes: attrs})
		}
		if cerr != nil {
			return "", false, wrap("sqs: create queue "+name, cerr)
		}
		u, created = aws.ToString(cout.QueueUrl), true
	case kindOf(err) == semantics.NotFound:
		return "", false, broker.Errorf(semantics.NotFound, "sqs: queue "+name, "queue does not exist (and the broker was opened with create=false)")
	default:
		return "", false, wrap("sqs: queue "+name, err)
	}
	b.mu.Lock()
	b.urls[name] = u
	b.mu.Unlock()
	return u, created, nil
}

// subscribeQueue subscribes the queue info describes to topic's SNS topic
// with raw message delivery, and lets SNS send to a queue it created.
func (b *Broker) subscribeQueue(ctx context.Context, topic string, info QueueInfo) error {
	const op = "sqs: subscribe to SNS"
	topicARN, err := b.topicARN(ctx, TopicName(topic, b.opts.FIFO))
	if err != nil {
		return err
	}
	if b.opts.NoCreate {
		return nil // the subscription must exist already
	}
	if info.Created {
		policy, _ := json.Marshal(map[string]any{
			"Version": "2012-10-17",
			"Statement": []any{map[string]any{
				"Sid":       "queuekit-sns",
				"Effect":    "Allow",
				"Principal": map[string]string{"Service": "sns.amazonaws.com"},
				"Action":    "sqs:SendMessage",
				"Resource":  info.ARN,
				"Condition": map[string]any{"ArnEquals": map[string]string{"aws:SourceArn": topicARN}},
			}},
		})
		if _, err := b.client.SetQueueAttributes(ctx, &awssqs.SetQueueAttributesInput{
			QueueUrl:   &info.URL,
			Attributes: map[string]string{string(types.QueueAttributeNamePolicy): string(policy)},
		}); err != nil {
			return wrap(op+": queue policy", err)
		}
	}
	_, err = b.sns.Subscribe(ctx, &sns.SubscribeInput{
		TopicArn:              &topicARN,
		Protocol:              aws.String("sqs"),
		Endpoint:              &info.ARN,
		Attributes:            map[string]string{"RawMessageDelivery": "true"},
		ReturnSubscriptionArn: true,
	})
	return wrap(op, err)
}

// Depth is the message count of a queue, as SQS approximates it.
type Depth struct {
	// Visible messages wait to be received (ApproximateNumberOfMessages).
	Visible int64
	// InFlight messages were received and are neither deleted nor visible
	// again (ApproximateNumberOfMessagesNotVisible).
	InFlight int64
	// Delayed messages are not visible yet (ApproximateNumberOfMessagesDelayed).
	Delayed int64
}

// Total is Visible + InFlight + Delayed: the consumer's lag.
func (d Depth) Total() int64 { return d.Visible + d.InFlight + d.Delayed }

// QueueDepth returns the message counts of queue (a queue name or URL).
func (b *Broker) QueueDepth(ctx context.Context, queue string) (Depth, error) {
	const op = "sqs: queue depth"
	u, err := b.existingQueue(ctx, queue)
	if err != nil {
		return Depth{}, err
	}
	out, err := b.client.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{
		QueueUrl: &u,
		AttributeNames: []types.QueueAttributeName{
			types.QueueAttributeNameApproximateNumberOfMessages,
			types.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
			types.QueueAttributeNameApproximateNumberOfMessagesDelayed,
		},
	})
	if err != nil {
		return Depth{}, wrap(op, err)
	}
	n := func(a types.QueueAttributeName) int64 {
		v, _ := strconv.ParseInt(out.Attributes[string(a)], 10, 64)
		return v
	}
	return Depth{
		Visible:  n(types.QueueAttributeNameApproximateNumberOfMessages),
		InFlight: n(types.QueueAttributeNameApproximateNumberOfMessagesNotVisible),
		Delayed:  n(types.QueueAttributeNameApproximateNumberOfMessagesDelayed),
	}, nil
}

// Depth returns the message counts of the queue that subscribers of topic
// in group read (see SubscriptionQueue).
func (b *Broker) Depth(ctx context.Context, topic, group string) (Depth, error) {
	return b.QueueDepth(ctx, b.SubscriptionQueue(topic, group))
}

// existingQueue resolves a queue name or URL without creating anything.
func (b *Broker) existingQueue(ctx context.Context, queue string) (string, error) {
	if isQueueURL(queue) {
		return queue, nil
	}
	b.mu.Lock()
	u, ok := b.urls[queue]
	b.mu.Unlock()
	if ok {
		return u, nil
	}
	out, err := b.client.GetQueueUrl(ctx, &awssqs.GetQueueUrlInput{QueueName: &queue})
	if err != nil {
		return "", wrap("sqs: queue "+queue, err)
	}
	return aws.ToString(out.QueueUrl), nil
}

// RedriveOptions tune Redrive.
type RedriveOptions struct {
	// Max is the most messages to move; 0 means as many as the
	// dead-letter queue held (visible) when Redrive started, so that
	// messages that fail again and come back are not moved in a loop.
	Max int
	// VisibilityTimeout hides each message being moved from other
	// consumers of the dead-letter queue; default 30s.
	VisibilityTimeout time.Duration
}

// Redrive moves messages from dead-letter queue dlq back to queue source
// (each a queue name or URL), ten at a time: it sends each message's body
// and message attributes unchanged (so its ID, key and headers survive) and
// deletes it from dlq only after SQS accepted the send. A message whose
// send fails stays in dlq, visible again at once, and Redrive stops with
// the error. On a FIFO source the message keeps its MessageGroupId and gets
// a fresh MessageDeduplicationId, so that the queue's five-minute
// deduplication does not drop it. Redrive returns how many messages it
// moved.
func (b *Broker) Redrive(ctx context.Context, dlq, source string, opts RedriveOptions) (int, error) {
	const op = "sqs: redrive"
	if opts.Max < 0 || opts.VisibilityTimeout < 0 {
		return 0, broker.Errorf(semantics.InvalidArgument, op, "Max and VisibilityTimeout must not be negative")
	}
	vis := DefaultVisibilityTimeout
	if opts.VisibilityTimeout > 0 {
		vis = opts.VisibilityTimeout
	}
	dlqURL, err := b.existingQueue(ctx, dlq)
	if err != nil {
		return 0, err
	}
	srcURL, err := b.existingQueue(ctx, source)
	if err != nil {
		return 0, err
	}
	limit := opts.Max
	if limit == 0 {
		d, err := b.QueueDepth(ctx, dlqURL)
		if err != nil {
			return 0, err
		}
		limit = int(d.Visible)
	}
	fifo := strings.HasSuffix(srcURL, fifoSuffix)
	moved := 0
	for moved < limit {
		out, err := b.client.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{
			QueueUrl:                    &dlqURL,
			MaxNumberOfMessages:         int32(min(limit-moved, maxBatchEntries)),
			VisibilityTimeout:           ceilSeconds(vis, 1, maxVisibility),
			MessageAttributeNames:       []string{"All"},
			MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameMessageGroupId},
		})
		if err != nil {
			return moved, wrap(op+": receive from "+dlq, err)
		}
		if len(out.Messages) == 0 {
			return moved, nil
		}
		n, err := b.redriveBatch(ctx, dlqURL, srcURL, fifo, out.Messages)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// redriveBatch sends msgs to srcURL and deletes from dlqURL those sent.
func (b *Broker) redriveBatch(ctx context.Context, dlqURL, srcURL string, fifo bool, msgs []types.Message) (int, error) {
	const op = "sqs: redrive"
	entries := make([]types.SendMessageBatchRequestEntry, len(msgs))
	for i, m := range msgs {
		entries[i] = types.SendMessageBatchRequestEntry{Id: &batchIDs[i], MessageBody: m.Body, MessageAttributes: m.MessageAttributes}
		if fifo {
			group := m.Attributes[string(types.MessageSystemAttributeNameMessageGroupId)]
			if group == "" {
				group = aws.ToString(m.MessageId)
			}
			entries[i].MessageGroupId = aws.String(group)
			entries[i].MessageDeduplicationId = aws.String(broker.NewID())
		}
	}
	sent := make([]bool, len(msgs))
	var sendErr error
	out, err := b.client.SendMessageBatch(ctx, &awssqs.SendMessageBatchInput{QueueUrl: &srcURL, Entries: entries})
	if err != nil {
		sendErr = wrap(op+": send", err)
	} else {
		for _, s := range out.Successful {
			if i, err := strconv.Atoi(aws.ToString(s.Id)); err == nil && i < len(msgs) {
				sent[i] = true
			}
		}
		for _, f := range out.Failed {
			sendErr = errors.Join(sendErr, entryError(op+": send", aws.ToString(f.Code), aws.ToString(f.Message), f.SenderFault))
		}
	}
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
		_, _ = b.client.ChangeMessageVisibilityBatch(ctx, &awssqs.ChangeMessageVisibilityBatchInput{QueueUrl: &dlqURL, Entries: back})
	}
	moved := 0
	if len(del) > 0 {
		dout, err := b.client.DeleteMessageBatch(ctx, &awssqs.DeleteMessageBatchInput{QueueUrl: &dlqURL, Entries: del})
		if err != nil {
			return 0, errors.Join(sendErr, wrap(op+": delete from the dead-letter queue after sending (the sent copies are in the source queue; these stay in the dead-letter queue too)", err))
		}
		moved = len(dout.Successful)
		for _, f := range dout.Failed {
			sendErr = errors.Join(sendErr, entryError(op+": delete", aws.ToString(f.Code), aws.ToString(f.Message), f.SenderFault))
		}
	}
	if sendErr != nil {
		return moved, &broker.Error{Kind: kindOf(sendErr), Op: op, Err: sendErr}
	}
	return moved, nil
}
