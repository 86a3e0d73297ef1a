package sqs

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// settleInflight is how many DeleteMessageBatch (or
// ChangeMessageVisibilityBatch) requests one subscriber has in flight: as
// many as it has pollers at most (DefaultPollers), and more, so that
// queued deletes keep up with full receives (with 4, at 15ms a request,
// they fell behind a backlog drained by 8 pollers).
const settleInflight = 16

// ackLinger is how long an ack that would go out in a partial
// DeleteMessageBatch waits for more acks (the rest of its receive, as a
// rule, whose handlers finish at about the same time).
const ackLinger = time.Millisecond

// maxVisibilitySecs is the longest visibility timeout SQS accepts, in seconds.
const maxVisibilitySecs = int32(maxVisibility / time.Second)

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
// RedrivePolicy to a dead-letter queue (see EnsureQueue and
// DeadLetterQueue). opts.AckTimeout is the visibility timeout;
// opts.Prefetch bounds the deliveries held unsettled (default 2 × Pollers
// × MaxMessages). PerKey ordering needs FIFO queues (fifo=true) and is
// refused as Unsupported otherwise; under AtMostOnce, Ack returns only once
// DeleteMessageBatch deleted the message, within its visibility timeout.
func (b *Broker) NewSubscriber(ctx context.Context, opts driver.SubscriberOptions) (driver.Subscriber, error) {
	s, err := b.subscribe(ctx, opts)
	if err != nil {
		return nil, err // not s: a nil *Subscriber in a non-nil interface
	}
	return s, nil
}

func (b *Broker) subscribe(ctx context.Context, opts driver.SubscriberOptions) (*Subscriber, error) {
	const op = "sqs: subscribe"
	opts = complete(opts)
	fifo := b.fifo(opts.Topic)
	if opts.Ordering == semantics.PerKey && !fifo {
		return nil, driver.Errorf(semantics.Unsupported, op, "per-key ordering needs FIFO queues: open the broker with fifo=true (Options.FIFO) or name a *.fifo queue")
	}
	switch opts.Guarantee {
	case semantics.AtLeastOnce, semantics.AtMostOnce:
	default:
		return nil, driver.Errorf(semantics.Unsupported, op, "guarantee %v: the adapter consumes at-least-once or at-most-once", opts.Guarantee)
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
	visSecs := ceilSeconds(vis, 1, maxVisibilitySecs)
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
		amo:         opts.Guarantee == semantics.AtMostOnce,
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
	if !s.amo {
		// An ack after handling may wait a moment for the acks of the
		// rest of its receive; one before handling goes out at once.
		s.deleter.linger = ackLinger
	}
	s.changer = newBatcher(settleInflight, 0, b.opts.RequestTimeout, s.changeBatch)
	for range min(IdlePollers, b.opts.Pollers) {
		s.addPoller(true)
	}
	s.extenderDone = make(chan struct{})
	go s.extend()
	return s, nil
}

// complete fills in the defaults package broker fills in, for the methods
// that take SubscriberOptions from users (DeadLetterQueue).
func complete(opts driver.SubscriberOptions) driver.SubscriberOptions {
	if opts.Group == "" {
		opts.Group = "default"
	}
	if opts.DeadLetterTopic == "" {
		opts.DeadLetterTopic = driver.DeadLetterTopic(opts.Topic)
	}
	return opts
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
// what it failed to forward — or would not, because no group is subscribed
// to the dead-letter topic and SNS would drop it — to
// GroupQueueName(opts.DeadLetterTopic, opts.Group), the queue that group
// opts.Group of the dead-letter topic reads once it subscribes. It is FIFO
// when the subscription's queue is. Empty Group and DeadLetterTopic mean
// their defaults ("default", Topic+".dlq").
func (b *Broker) DeadLetterQueue(opts driver.SubscriberOptions) string {
	opts = complete(opts)
	fifo := b.fifo(opts.Topic)
	if isQueueURL(opts.DeadLetterTopic) {
		return opts.DeadLetterTopic
	}
	if b.sns != nil {
		return GroupQueueName(opts.DeadLetterTopic, opts.Group, fifo)
	}
	return QueueName(opts.DeadLetterTopic, fifo)
}

// Subscriber reads one SQS queue with long polling: the adapter's
// driver.Subscriber and driver.BatchReceiver. Reach it from a
// *broker.Subscriber with As, for QueueURL and Depth.
type Subscriber struct {
	b        *Broker
	opts     driver.SubscriberOptions
	queueURL string
	vis      time.Duration
	visSecs  int32
	// deadAfter > 0 (fan-out mode with MaxAttempts): deliveries with a
	// higher Attempt are forwarded to the dead-letter topic, not handed out.
	deadAfter int
	// amo: at-most-once, so Ack must be recorded within the visibility
	// timeout (see delivery.Ack).
	amo       bool
	deadReady atomic.Bool // the dead-letter topic was seen to have a group

	ch      chan *delivery // received, not yet handed out
	tokens  chan struct{}  // one per delivery that may be held unsettled
	gather  sync.Mutex     // held by the poller taking tokens
	errs    chan error     // the latest polling error, for Receive
	closing chan struct{}

	pollCtx     context.Context
	stopPolling context.CancelFunc
	pollers     sync.WaitGroup
	// pollMu orders the start of a poller (pollers.Add) before Close
	// (closing, then pollers.Wait); active counts the pollers.
	pollMu       sync.Mutex
	active       int
	extenderDone chan struct{}
	closeOnce    sync.Once

	deleter *batcher[string]
	changer *batcher[visChange]

	mu          sync.Mutex
	outstanding map[*delivery]struct{} // unsettled: their visibility is extended
	// acks counts the queued deletes of at-least-once Acks not answered
	// yet, for Close to wait for.
	acks pending
}

// pending counts operations under way, for a wait that may start while
// more are added (which a sync.WaitGroup does not allow).
type pending struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0 while someone waits
}

func (p *pending) add() {
	p.mu.Lock()
	p.n++
	p.mu.Unlock()
}

func (p *pending) done() {
	p.mu.Lock()
	p.n--
	if p.n == 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
	p.mu.Unlock()
}

// wait returns once nothing is under way, or with ctx's error.
func (p *pending) wait(ctx context.Context) error {
	p.mu.Lock()
	if p.n == 0 {
		p.mu.Unlock()
		return nil
	}
	if p.idle == nil {
		p.idle = make(chan struct{})
	}
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// QueueURL returns the URL of the queue the subscriber reads.
func (s *Subscriber) QueueURL() string { return s.queueURL }

// Depth returns the message counts of the subscriber's queue.
func (s *Subscriber) Depth(ctx context.Context) (Depth, error) {
	return s.b.QueueDepth(ctx, s.queueURL)
}

// As sets target, a **sqs.Client, to the SQS client the subscriber uses.
func (s *Subscriber) As(target any) bool { return s.b.As(target) }

// Receive returns the next delivery. Polling errors are returned as they
// happen (the pollers keep polling, with backoff); after Close it returns
// driver.ErrClosed.
func (s *Subscriber) Receive(ctx context.Context) (driver.Delivery, error) {
	select {
	case <-s.closing:
		return nil, driver.ErrClosed
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
		return nil, driver.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ReceiveBatch waits like Receive for one delivery, then adds those
// already received, up to len(buf).
func (s *Subscriber) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	return driver.FillBatch(ctx, buf, s.Receive, driver.Ready(s.ch))
}

// Close stops polling and waits, while ctx allows, for the long polls in
// flight to end: SQS may hand a message to a poll whose caller went away,
// and that message would then stay hidden for its visibility timeout. It
// then makes the messages received but not yet handed out visible again at
// once, stops extending the visibility of deliveries still unsettled,
// which the queue redelivers when their visibility timeout ends, and waits
// for the deletes that at-least-once Acks queued. Deliveries handed out
// before Close can still be settled.
//
// The wait lasts up to wait_time. When ctx ends first, the polls are
// abandoned: a message the queue hands one of them is delivered again after
// its visibility timeout — a delay, never a loss.
func (s *Subscriber) Close(ctx context.Context) error {
	var err error
	s.closeOnce.Do(func() {
		s.pollMu.Lock()
		close(s.closing) // no poller starts after this
		s.pollMu.Unlock()
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
		// The deletes of the acks queued so far: waited for, so that what
		// was acked before Close is gone from the queue after it. Not
		// waited for beyond ctx: an abandoned delete only brings its
		// message back.
		_ = s.acks.wait(ctx)
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

// addPoller starts a poller, unless Close has begun or (for one that is
// not permanent, which stays only while receives come back full) Pollers
// run.
func (s *Subscriber) addPoller(permanent bool) {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	if s.stopping() || (!permanent && s.active >= s.b.opts.Pollers) {
		return
	}
	s.active++
	s.pollers.Add(1)
	go s.poll(permanent)
}

// poll runs one long-polling loop until Close, or, when it is not
// permanent (one of the IdlePollers), until a receive fails or brings
// fewer than MaxMessages. A receive that brings MaxMessages (the queue has
// a backlog) starts another poller, up to Pollers.
func (s *Subscriber) poll(permanent bool) {
	defer func() {
		s.pollMu.Lock()
		s.active--
		s.pollMu.Unlock()
		s.pollers.Done()
	}()
	const op = "sqs: receive"
	backoff := 100 * time.Millisecond
	waitSecs := int32(s.b.opts.WaitTime / time.Second)
	for {
		n := s.acquire()
		if n == 0 {
			return
		}
		sent := time.Now()
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
			if !permanent {
				return // the permanent pollers go on trying
			}
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
		deadline := hiddenUntil(sent, now, s.vis)
		for _, m := range out.Messages {
			msg, derr := decode(m, s.opts.Topic)
			if derr != nil {
				msg.SetHeader(HeaderDecodeError, derr.Error())
			}
			d := &delivery{s: s, msg: msg, receipt: aws.ToString(m.ReceiptHandle), received: now, deadline: deadline}
			s.mu.Lock()
			s.outstanding[d] = struct{}{}
			s.mu.Unlock()
			if s.deadAfter > 0 && msg.Attempt > s.deadAfter {
				s.forwardDead(d)
				continue
			}
			s.ch <- d // never blocks: a token was taken for it
		}
		if len(out.Messages) == s.b.opts.MaxMessages {
			s.addPoller(false)
		} else if !permanent {
			return
		}
	}
}

// hiddenUntil is when the visibility timeout vis of a message received by
// a request sent at sent and answered at got ends at the earliest. SQS
// starts the timeout when it picks the message: at most the whole request
// before the answer, and for a long poll that waited, just before it
// answered (allow a tenth of the timeout, at least 100ms, for the answer
// to travel).
func hiddenUntil(sent, got time.Time, vis time.Duration) time.Time {
	return got.Add(vis - min(got.Sub(sent), max(vis/10, 100*time.Millisecond)))
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
// that fails, or when the dead-letter topic has no group (SNS would drop
// the message), d becomes visible again after its timeout and is tried
// again, up to forwardTries times, after which the queue's RedrivePolicy
// moves it to the group's dead-letter queue.
func (s *Subscriber) forwardDead(d *delivery) {
	const op = "sqs: dead-letter"
	ctx, cancel := context.WithTimeout(s.pollCtx, s.b.opts.RequestTimeout)
	defer cancel()
	if !s.deadReady.Load() {
		ok, err := s.b.HasGroup(ctx, s.opts.DeadLetterTopic)
		if err != nil || !ok {
			d.letGo()
			if err != nil && s.pollCtx.Err() == nil {
				s.report(driver.Errorf(semantics.Transient, op+" to "+s.opts.DeadLetterTopic, "%v", err))
			}
			return
		}
		s.deadReady.Store(true)
	}
	m := d.msg
	attempts := m.Attempt - 1
	m.SetHeader(driver.HeaderOriginalTopic, s.opts.Topic)
	m.SetHeader(driver.HeaderDeadAttempts, strconv.Itoa(attempts))
	m.SetHeader(driver.HeaderDeadReason, "delivered "+strconv.Itoa(attempts)+" times (MaxAttempts) without an ack")
	m.Topic, m.Attempt = "", 0
	err := s.b.publish(ctx, op, s.opts.DeadLetterTopic, []*driver.Message{m}, nil)
	if err == nil {
		err = d.Ack(ctx)
	}
	if err != nil {
		d.letGo()
		if s.pollCtx.Err() == nil {
			s.report(driver.Errorf(semantics.Transient, op+" to "+s.opts.DeadLetterTopic, "%v", err))
		}
	}
}

// HeaderDecodeError is set on a delivery whose attributes claim a queuekit
// encoding that does not decode; its Payload is then the raw body.
const HeaderDecodeError = "queuekit-decode-error"

// gatherWait is how long a poller that has room for some messages waits
// for room for a full receive (MaxMessages) before it asks for fewer.
const gatherWait = 50 * time.Millisecond

// acquire takes prefetch tokens for one receive and returns how many, or 0
// once Close has begun. It waits for one, then up to gatherWait for a full
// receive's worth (MaxMessages, or the whole prefetch when it is smaller):
// waiting a little for a full batch, rather than polling for whatever room
// there is, keeps receives full when handlers are the bottleneck, and not
// waiting longer keeps a subscriber that holds deliveries unsettled
// receiving into the room it has left. One poller gathers at a time, so
// that pollers holding part of a batch each cannot starve one another.
func (s *Subscriber) acquire() int {
	s.gather.Lock()
	defer s.gather.Unlock()
	want := min(s.b.opts.MaxMessages, cap(s.tokens))
	select {
	case <-s.tokens:
	case <-s.closing:
		return 0
	}
	n := 1
	var timeout <-chan time.Time
gather:
	for n < want {
		select {
		case <-s.tokens:
			n++
			continue
		default:
		}
		if timeout == nil {
			t := time.NewTimer(gatherWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-s.tokens:
			n++
		case <-timeout:
			break gather
		case <-s.closing:
			s.release(n)
			return 0
		}
	}
	if s.stopping() {
		s.release(n)
		return 0
	}
	return n
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
			sent := time.Now()
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
					// Gone (settled, or its visibility ended and it was
					// received again): stop extending, and never let an
					// at-most-once Ack count on its receipt.
					delete(s.outstanding, d)
					d.deadline = time.Time{}
				} else {
					d.deadline = sent.Add(s.vis)
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

// delivery is one received SQS message. Package broker calls Ack or Nack
// at most once, or again after one failed.
type delivery struct {
	s        *Subscriber
	msg      *driver.Message
	receipt  string
	received time.Time
	deadline time.Time // guarded by s.mu: when its visibility may end
	letOnce  sync.Once
}

// Message returns the delivered message.
func (d *delivery) Message() *driver.Message { return d.msg }

// Ack deletes the message from the queue (through DeleteMessageBatch,
// together with concurrent acks). Under at-least-once it only queues the
// delete (see ackLater). Under at-most-once it waits for it, and the
// request must be answered before the message's visibility timeout may
// have ended: SQS
// accepts a delete with the receipt of an earlier receive but does not
// delete the message then, which would deliver it again after it was
// handled. So such an Ack fails, and the message is not handled, when the
// timeout may have ended already (its extension failed, or it was held
// past max_extension) or ends before SQS answers.
func (d *delivery) Ack(ctx context.Context) error {
	if !d.s.amo {
		d.ackLater()
		return nil
	}
	d.letGo()
	var deadline time.Time
	if d.s.amo {
		d.s.mu.Lock()
		deadline = d.deadline
		d.s.mu.Unlock()
		if !time.Now().Before(deadline) {
			return driver.Errorf(semantics.Transient, "sqs: ack", "message %s: its visibility timeout may have ended, so it may be delivered again: not acked (at most once)", d.msg.ID)
		}
	}
	err := d.s.deleter.do(ctx, d.receipt, deadline)
	if err != nil && d.s.amo && ctx.Err() == nil && !time.Now().Before(deadline) {
		return driver.Errorf(semantics.Transient, "sqs: ack", "message %s: SQS did not answer the delete within the visibility timeout (at most once): %w", d.msg.ID, err)
	}
	return err
}

// ackLater queues d's delete for the next DeleteMessageBatch and returns
// at once (at-least-once): d is no longer extended, and its prefetch slot
// is freed once SQS answered, so that Prefetch bounds the deletes under way
// too (a consumer never runs ahead of its deletes, whose messages would
// otherwise wait undeleted ever longer, until their visibility timeout
// brought them back). A delete that fails is not retried (nor reported:
// nobody waits for it): the message comes back after its visibility
// timeout, a duplicate, never a loss. Close waits for the deletes under
// way.
func (d *delivery) ackLater() {
	d.letOnce.Do(func() {
		s := d.s
		s.mu.Lock()
		delete(s.outstanding, d)
		s.mu.Unlock()
		s.acks.add()
		s.deleter.submit(&job[string]{ctx: context.Background(), v: d.receipt, chunk: 1, finish: func(error) {
			s.release(1)
			s.acks.done()
		}})
	})
}

// Nack makes the message visible again after delay, rounded up to whole
// seconds and capped at 12h (through ChangeMessageVisibilityBatch). The
// queue counts the redelivery as another receive, so MaxAttempts applies.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	d.letGo()
	return d.s.changer.do(ctx, visChange{receipt: d.receipt, secs: ceilSeconds(delay, 0, maxVisibilitySecs)}, time.Time{})
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
