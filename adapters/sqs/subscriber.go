package sqs

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// settleInflight is how many DeleteMessageBatch (or
// ChangeMessageVisibilityBatch) requests one subscriber has in flight.
const settleInflight = 4

// ackLinger is how long an ack that would go out in a partial
// DeleteMessageBatch waits for more acks (the rest of its receive, as a
// rule, whose handlers finish at about the same time).
const ackLinger = time.Millisecond

// maxVisibility is the longest visibility timeout SQS accepts, in seconds.
const maxVisibility = 43200

var receiveSystemAttrs = []types.MessageSystemAttributeName{
	types.MessageSystemAttributeNameApproximateReceiveCount,
	types.MessageSystemAttributeNameSentTimestamp,
	types.MessageSystemAttributeNameMessageGroupId,
}

// NewSubscriber subscribes to opts.Topic. In queue mode it reads the
// topic's queue, whatever opts.Group; in fan-out mode it reads the group's
// own queue, subscribed to the topic's SNS topic with raw message delivery.
// Missing queues, topics and subscriptions are created unless the broker
// was opened with create=false. With opts.MaxAttempts > 0 the queue gets a
// RedrivePolicy to a dead-letter queue (see EnsureQueue and DeadLetterQueue).
// opts.AckTimeout is the visibility timeout; opts.Prefetch bounds the
// deliveries held unsettled (default Pollers × MaxMessages).
func (b *Broker) NewSubscriber(ctx context.Context, opts broker.SubscriberOptions) (broker.Subscriber, error) {
	return b.Subscribe(ctx, opts)
}

// Subscribe is NewSubscriber returning the concrete type, which has Depth
// and QueueURL.
func (b *Broker) Subscribe(ctx context.Context, opts broker.SubscriberOptions) (*Subscriber, error) {
	const op = "sqs: subscribe"
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := opts.Validate(op); err != nil {
		return nil, err
	}
	opts = opts.WithDefaults()
	fifo := b.fifo(opts.Topic)
	if opts.Ordering == semantics.PerKey && !fifo {
		return nil, broker.Errorf(semantics.Unsupported, op, "per-key ordering needs FIFO queues: open the broker with fifo=true (Options.FIFO) or name a *.fifo queue")
	}
	spec := QueueSpec{FIFO: fifo}
	deadAfter := 0
	if opts.MaxAttempts > 0 {
		spec.DeadLetterQueue = b.DeadLetterQueue(opts)
		spec.MaxReceiveCount = opts.MaxAttempts
		if b.sns != nil {
			// The subscriber forwards dead letters to the SNS topic; the
			// RedrivePolicy only catches those it failed to forward.
			deadAfter = opts.MaxAttempts
			spec.MaxReceiveCount = opts.MaxAttempts + forwardTries
			if _, err := b.topicARN(ctx, TopicName(opts.DeadLetterTopic, b.opts.FIFO)); err != nil {
				return nil, err
			}
		}
	}
	name := b.SubscriptionQueue(opts.Topic, opts.Group)
	info, err := b.EnsureQueue(ctx, name, spec)
	if err != nil {
		return nil, err
	}
	if b.sns != nil {
		if err := b.subscribeQueue(ctx, opts.Topic, info); err != nil {
			return nil, err
		}
	}

	vis := b.opts.VisibilityTimeout
	if opts.AckTimeout > 0 {
		vis = opts.AckTimeout
	}
	visSecs := ceilSeconds(vis, 1, maxVisibility)
	prefetch := opts.Prefetch
	if prefetch == 0 {
		prefetch = 2 * b.opts.Pollers * b.opts.MaxMessages
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Subscriber{
		b:           b,
		opts:        opts,
		queueURL:    info.URL,
		vis:         time.Duration(visSecs) * time.Second,
		visSecs:     visSecs,
		deadAfter:   deadAfter,
		ch:          make(chan *delivery, prefetch),
		tokens:      make(chan struct{}, prefetch),
		errs:        make(chan error, 1),
		closing:     make(chan struct{}),
		pollCtx:     pctx,
		stopPolling: cancel,
		outstanding: make(map[*delivery]struct{}),
	}
	for range prefetch {
		s.tokens <- struct{}{}
	}
	s.deleter = newBatcher(settleInflight, 0, b.opts.RequestTimeout, s.deleteBatch)
	s.deleter.linger = ackLinger
	s.changer = newBatcher(settleInflight, 0, b.opts.RequestTimeout, s.changeBatch)
	s.pollers.Add(b.opts.Pollers)
	for range b.opts.Pollers {
		go s.poll()
	}
	s.extenderDone = make(chan struct{})
	go s.extend()
	return s, nil
}

// SubscriptionQueue returns the name of the queue a subscriber of topic in
// group reads: QueueName(topic) in queue mode, GroupQueueName(topic, group)
// in fan-out mode.
func (b *Broker) SubscriptionQueue(topic, group string) string {
	if group == "" {
		group = "default"
	}
	if b.sns != nil {
		return GroupQueueName(topic, group, b.opts.FIFO)
	}
	return QueueName(topic, b.opts.FIFO)
}

// DeadLetterQueue returns the name of the queue that the RedrivePolicy of
// a subscription with MaxAttempts moves dead letters to. In queue mode that
// is the dead-letter topic's queue, QueueName(opts.DeadLetterTopic), so
// subscribing to the dead-letter topic consumes them. In fan-out mode the
// subscriber itself publishes a message received more than MaxAttempts
// times to the dead-letter SNS topic (a RedrivePolicy can only name a
// queue, and every group subscribed to the dead-letter topic should get
// it), and the RedrivePolicy, with forwardTries more receives, moves only
// what it failed to forward, to GroupQueueName(opts.DeadLetterTopic,
// opts.Group). It is FIFO when the subscription's queue is.
func (b *Broker) DeadLetterQueue(opts broker.SubscriberOptions) string {
	opts = opts.WithDefaults()
	fifo := b.fifo(opts.Topic)
	if isQueueURL(opts.DeadLetterTopic) {
		return opts.DeadLetterTopic
	}
	if b.sns != nil {
		return GroupQueueName(opts.DeadLetterTopic, opts.Group, fifo)
	}
	return QueueName(opts.DeadLetterTopic, fifo)
}

// Subscriber reads one SQS queue with long polling. It implements
// broker.Subscriber and broker.BatchReceiver.
type Subscriber struct {
	b        *Broker
	opts     broker.SubscriberOptions
	queueURL string
	vis      time.Duration
	visSecs  int32
	// deadAfter > 0 (fan-out mode with MaxAttempts): deliveries with a
	// higher Attempt are forwarded to the dead-letter topic, not handed out.
	deadAfter int

	ch      chan *delivery // received, not yet handed out
	tokens  chan struct{}  // one per delivery that may be held unsettled
	gather  sync.Mutex     // held by the poller taking tokens
	errs    chan error     // the latest polling error, for Receive
	closing chan struct{}

	pollCtx      context.Context
	stopPolling  context.CancelFunc
	pollers      sync.WaitGroup
	extenderDone chan struct{}
	closeOnce    sync.Once

	deleter *batcher[string]
	changer *batcher[visChange]

	mu          sync.Mutex
	outstanding map[*delivery]struct{} // unsettled: their visibility is extended
}

// QueueURL returns the URL of the queue the subscriber reads.
func (s *Subscriber) QueueURL() string { return s.queueURL }

// Depth returns the message counts of the subscriber's queue.
func (s *Subscriber) Depth(ctx context.Context) (Depth, error) {
	return s.b.QueueDepth(ctx, s.queueURL)
}

// Receive returns the next delivery. Polling errors are returned as they
// happen (the pollers keep polling, with backoff); after Close it returns
// broker.ErrClosed.
func (s *Subscriber) Receive(ctx context.Context) (broker.Delivery, error) {
	select {
	case <-s.closing:
		return nil, broker.WrapError(semantics.Closed, "sqs: receive", broker.ErrClosed)
	default:
	}
	select {
	case d := <-s.ch:
		return d, nil
	default:
	}
	select {
	case d := <-s.ch:
		return d, nil
	case err := <-s.errs:
		return nil, err
	case <-s.closing:
		return nil, broker.WrapError(semantics.Closed, "sqs: receive", broker.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ReceiveBatch waits like Receive for one delivery, then adds those
// already received, up to len(buf).
func (s *Subscriber) ReceiveBatch(ctx context.Context, buf []broker.Delivery) (int, error) {
	return broker.FillBatch(ctx, buf, s.Receive, broker.Ready(s.ch))
}

// Close stops polling and waits, while ctx allows, for the long polls in
// flight to end: SQS may hand a message to a poll whose caller went away,
// and that message would then stay hidden for its visibility timeout. It
// then makes the messages received but not yet handed out visible again at
// once, and stops extending the visibility of deliveries still unsettled,
// which the queue redelivers when their visibility timeout ends.
// Deliveries handed out before Close can still be settled.
//
// The wait lasts up to wait_time (20s by default, so shorten it where
// subscribers come and go often). When ctx ends first, the polls are
// abandoned: a message the queue hands one of them is delivered again after
// its visibility timeout — a delay, never a loss.
func (s *Subscriber) Close(ctx context.Context) error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closing)
		polled := make(chan struct{})
		go func() { s.pollers.Wait(); close(polled) }()
		select {
		case <-polled:
		case <-ctx.Done():
			s.stopPolling() // abandon the polls in flight
			<-polled
		}
		s.stopPolling()
		<-s.extenderDone
		var back []*delivery
	drain:
		for {
			select {
			case d := <-s.ch:
				back = append(back, d)
			default:
				break drain
			}
		}
		// Released even when ctx is over: they are ours to give back.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.b.opts.RequestTimeout)
		defer cancel()
		for i := 0; i < len(back); i += maxBatchEntries {
			chunk := back[i:min(i+maxBatchEntries, len(back))]
			for _, d := range chunk {
				d.letGo()
			}
			if _, cerr := s.changeVisibility(rctx, chunk, 0); cerr != nil && err == nil {
				err = cerr
			}
		}
	})
	return err
}

// stopping reports whether Close has begun.
func (s *Subscriber) stopping() bool {
	select {
	case <-s.closing:
		return true
	default:
		return s.pollCtx.Err() != nil
	}
}

// poll runs one long-polling loop until Close.
func (s *Subscriber) poll() {
	defer s.pollers.Done()
	const op = "sqs: receive"
	backoff := 100 * time.Millisecond
	waitSecs := int32(s.b.opts.WaitTime / time.Second)
	for {
		n := s.acquire()
		if n == 0 {
			return
		}
		out, err := s.b.client.ReceiveMessage(s.pollCtx, &awssqs.ReceiveMessageInput{
			QueueUrl:                    &s.queueURL,
			MaxNumberOfMessages:         int32(n),
			WaitTimeSeconds:             waitSecs,
			VisibilityTimeout:           s.visSecs,
			MessageAttributeNames:       []string{"All"},
			MessageSystemAttributeNames: receiveSystemAttrs,
		})
		if err != nil {
			s.release(n)
			if s.stopping() {
				return
			}
			s.report(wrap(op, err))
			select {
			case <-time.After(backoff):
			case <-s.closing:
				return
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		select {
		case <-s.errs: // polling works again: drop a stale error
		default:
		}
		if len(out.Messages) == 0 && waitSecs == 0 {
			// Short polling on an empty queue: do not spin.
			select {
			case <-time.After(shortPollPause):
			case <-s.closing:
			}
		}
		s.release(n - len(out.Messages))
		now := time.Now()
		for _, m := range out.Messages {
			msg, derr := decode(m, s.opts.Topic)
			if derr != nil {
				msg.SetHeader(HeaderDecodeError, derr.Error())
			}
			d := &delivery{s: s, msg: msg, receipt: aws.ToString(m.ReceiptHandle), received: now, deadline: now.Add(s.vis)}
			s.mu.Lock()
			s.outstanding[d] = struct{}{}
			s.mu.Unlock()
			if s.deadAfter > 0 && msg.Attempt > s.deadAfter {
				s.forwardDead(d)
				continue
			}
			s.ch <- d // never blocks: a token was taken for it
		}
	}
}

// shortPollPause is how long a poller rests after an empty receive when
// long polling is off (wait_time=0).
const shortPollPause = 200 * time.Millisecond

// forwardTries is how many times a fan-out subscriber tries to forward a
// dead letter to the dead-letter topic before the queue's RedrivePolicy
// moves it to the group's dead-letter queue instead.
const forwardTries = 3

// forwardDead publishes d, received more than MaxAttempts times, to the
// dead-letter topic with the dead-letter headers, then deletes it. When
// that fails, d becomes visible again after its timeout and is tried again.
func (s *Subscriber) forwardDead(d *delivery) {
	const op = "sqs: dead-letter"
	m := d.msg
	attempts := m.Attempt - 1
	m.SetHeader(broker.HeaderOriginalTopic, s.opts.Topic)
	m.SetHeader(broker.HeaderDeadAttempts, strconv.Itoa(attempts))
	m.SetHeader(broker.HeaderDeadReason, "delivered "+strconv.Itoa(attempts)+" times (MaxAttempts) without an ack")
	m.Topic, m.Attempt = "", 0
	ctx, cancel := context.WithTimeout(s.pollCtx, s.b.opts.RequestTimeout)
	defer cancel()
	err := s.b.publish(ctx, op, s.opts.DeadLetterTopic, []*broker.Message{m})
	if err == nil {
		err = d.Ack(ctx)
	}
	if err != nil {
		d.letGo()
		if s.pollCtx.Err() == nil {
			s.report(broker.WrapError(semantics.Transient, op+" to "+s.opts.DeadLetterTopic, err))
		}
	}
}

// HeaderDecodeError is set on a delivery whose attributes claim a queuekit
// encoding that does not decode; its Payload is then the raw body.
const HeaderDecodeError = "queuekit-decode-error"

// acquire takes a full receive's worth of prefetch tokens — MaxMessages,
// or the whole prefetch when it is smaller — and returns how many, or 0
// once Close has begun. Waiting for a full batch, rather than polling for whatever
// room there is, keeps receives full when handlers are the bottleneck. One
// poller gathers at a time, so that pollers holding part of a batch each
// cannot starve one another.
func (s *Subscriber) acquire() int {
	s.gather.Lock()
	defer s.gather.Unlock()
	want := min(s.b.opts.MaxMessages, cap(s.tokens))
	for n := 0; n < want; n++ {
		select {
		case <-s.tokens:
		case <-s.closing:
			s.release(n)
			return 0
		}
	}
	if s.stopping() {
		s.release(want)
		return 0
	}
	return want
}

func (s *Subscriber) release(n int) {
	for range n {
		s.tokens <- struct{}{}
	}
}

// report makes err the next error Receive returns, replacing an older one
// nobody has read.
func (s *Subscriber) report(err error) {
	for {
		select {
		case s.errs <- err:
			return
		default:
		}
		select {
		case <-s.errs:
		default:
		}
	}
}

// extend keeps the unsettled deliveries invisible to other consumers: each
// one whose visibility ends within half the timeout gets a fresh timeout,
// until it has been held MaxExtension.
func (s *Subscriber) extend() {
	defer close(s.extenderDone)
	t := time.NewTicker(max(s.vis/4, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.pollCtx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var due []*delivery
		var expired []*delivery
		s.mu.Lock()
		for d := range s.outstanding {
			switch {
			case now.Sub(d.received) >= s.b.opts.MaxExtension:
				expired = append(expired, d)
			case d.deadline.Sub(now) < s.vis/2:
				due = append(due, d)
			}
		}
		s.mu.Unlock()
		for _, d := range expired {
			d.letGo() // held too long: SQS will redeliver it; its prefetch slot is free
		}
		for i := 0; i < len(due); i += maxBatchEntries {
			chunk := due[i:min(i+maxBatchEntries, len(due))]
			ctx, cancel := context.WithTimeout(s.pollCtx, s.b.opts.RequestTimeout)
			failed, err := s.changeVisibility(ctx, chunk, s.visSecs)
			cancel()
			if err != nil {
				if s.pollCtx.Err() == nil {
					s.report(err)
				}
				continue
			}
			s.mu.Lock()
			for j, d := range chunk {
				if failed[j] {
					delete(s.outstanding, d) // gone (settled or redelivered): stop extending
				} else {
					d.deadline = now.Add(s.vis)
				}
			}
			s.mu.Unlock()
		}
	}
}

// changeVisibility sets the visibility timeout of up to 10 deliveries in
// one request and reports which entries failed.
func (s *Subscriber) changeVisibility(ctx context.Context, ds []*delivery, secs int32) ([]bool, error) {
	entries := make([]types.ChangeMessageVisibilityBatchRequestEntry, len(ds))
	for i, d := range ds {
		entries[i] = types.ChangeMessageVisibilityBatchRequestEntry{Id: &batchIDs[i], ReceiptHandle: &d.receipt, VisibilityTimeout: secs}
	}
	out, err := s.b.client.ChangeMessageVisibilityBatch(ctx, &awssqs.ChangeMessageVisibilityBatchInput{QueueUrl: &s.queueURL, Entries: entries})
	if err != nil {
		return nil, wrap("sqs: change visibility", err)
	}
	failed := make([]bool, len(ds))
	for _, f := range out.Failed {
		if i, err := strconv.Atoi(aws.ToString(f.Id)); err == nil && i >= 0 && i < len(ds) {
			failed[i] = true
		}
	}
	return failed, nil
}

// visChange is one ChangeMessageVisibility entry.
type visChange struct {
	receipt string
	secs    int32
}

func (s *Subscriber) deleteBatch(ctx context.Context, batch []*job[string]) {
	const op = "sqs: ack"
	entries := make([]types.DeleteMessageBatchRequestEntry, len(batch))
	for i, j := range batch {
		entries[i] = types.DeleteMessageBatchRequestEntry{Id: &batchIDs[i], ReceiptHandle: &j.v}
	}
	out, err := s.b.client.DeleteMessageBatch(ctx, &awssqs.DeleteMessageBatchInput{QueueUrl: &s.queueURL, Entries: entries})
	if err != nil {
		finishAll(batch, wrap(op, err))
		return
	}
	finishBatch(op, batch, sqsResults(op, out.Successful, func(e types.DeleteMessageBatchResultEntry) *string { return e.Id }, out.Failed))
}

func (s *Subscriber) changeBatch(ctx context.Context, batch []*job[visChange]) {
	const op = "sqs: nack"
	entries := make([]types.ChangeMessageVisibilityBatchRequestEntry, len(batch))
	for i, j := range batch {
		entries[i] = types.ChangeMessageVisibilityBatchRequestEntry{Id: &batchIDs[i], ReceiptHandle: &j.v.receipt, VisibilityTimeout: j.v.secs}
	}
	out, err := s.b.client.ChangeMessageVisibilityBatch(ctx, &awssqs.ChangeMessageVisibilityBatchInput{QueueUrl: &s.queueURL, Entries: entries})
	if err != nil {
		finishAll(batch, wrap(op, err))
		return
	}
	finishBatch(op, batch, sqsResults(op, out.Successful, func(e types.ChangeMessageVisibilityBatchResultEntry) *string { return e.Id }, out.Failed))
}

// ceilSeconds returns d in whole seconds, rounded up, within [lo, hi].
func ceilSeconds(d time.Duration, lo, hi int32) int32 {
	secs := (d + time.Second - 1) / time.Second
	return int32(min(max(int64(secs), int64(lo)), int64(hi)))
}

const (
	unsettled uint8 = iota
	acked
	nacked
)

// delivery is one received SQS message.
type delivery struct {
	s        *Subscriber
	msg      *broker.Message
	receipt  string
	received time.Time
	deadline time.Time // guarded by s.mu

	mu      sync.Mutex // serialises Ack and Nack
	state   uint8
	letOnce sync.Once
}

// Message returns the delivered message.
func (d *delivery) Message() *broker.Message { return d.msg }

// Ack deletes the message from the queue (through DeleteMessageBatch,
// together with concurrent acks). A failed Ack may be tried again.
func (d *delivery) Ack(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.state {
	case acked:
		return nil
	case nacked:
		return broker.ErrAlreadySettled
	}
	d.letGo()
	if err := d.s.deleter.do(ctx, d.receipt, 0); err != nil {
		return err
	}
	d.state = acked
	return nil
}

// Nack makes the message visible again after delay, rounded up to whole
// seconds and capped at 12h (through ChangeMessageVisibilityBatch). The
// queue counts the redelivery as another receive, so MaxAttempts applies.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.state {
	case nacked:
		return nil
	case acked:
		return broker.ErrAlreadySettled
	}
	d.letGo()
	if err := d.s.changer.do(ctx, visChange{receipt: d.receipt, secs: ceilSeconds(delay, 0, maxVisibility)}, 0); err != nil {
		return err
	}
	d.state = nacked
	return nil
}

// letGo stops extending d and frees its prefetch slot, once.
func (d *delivery) letGo() {
	d.letOnce.Do(func() {
		d.s.mu.Lock()
		delete(d.s.outstanding, d)
		d.s.mu.Unlock()
		d.s.release(1)
	})
}
