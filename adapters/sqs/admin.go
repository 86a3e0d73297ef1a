package sqs

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker/driver"
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
		return QueueInfo{}, driver.Errorf(semantics.InvalidArgument, op, "MaxReceiveCount must be > 0 with a DeadLetterQueue")
	}
	if name == "" {
		return QueueInfo{}, driver.Errorf(semantics.InvalidArgument, op, "queue name is empty")
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
			attrs[string(types.QueueAttributeNameVisibilityTimeout)] = strconv.Itoa(int(ceilSeconds(vis, 0, maxVisibilitySecs)))
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
		return "", false, noGroup("sqs: queue "+name, "queue does not exist (and the broker was opened with create=false)")
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
	if kindOf(err) == semantics.NotFound {
		b.forgetURL(u)
		return Depth{}, noGroup(op, "queue %s does not exist", queue)
	}
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

// existingQueue resolves a queue name or URL without creating anything; a
// missing queue is a NotFound error matching driver.ErrNoGroup.
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
	if kindOf(err) == semantics.NotFound {
		return "", noGroup("sqs: queue "+queue, "queue %s does not exist (declare it, or subscribe first)", queue)
	}
	if err != nil {
		return "", wrap("sqs: queue "+queue, err)
	}
	u = aws.ToString(out.QueueUrl)
	b.mu.Lock()
	b.urls[queue] = u
	b.mu.Unlock()
	return u, nil
}

// forgetURL drops the cached name of the queue at u, after a NotFound.
func (b *Broker) forgetURL(u string) {
	b.mu.Lock()
	for name, cached := range b.urls {
		if cached == u {
			delete(b.urls, name)
		}
	}
	delete(b.arns, u)
	b.mu.Unlock()
}
