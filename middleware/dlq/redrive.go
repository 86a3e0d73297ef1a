package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// RedriveOptions tune Redrive. The zero value moves every dead letter back to
// its original topic.
type RedriveOptions struct {
	// Limit moves at most this many messages; 0 moves all.
	Limit int
	// Filter, when set, moves only the messages it accepts; the others stay
	// in the dead-letter topic (they are held until Redrive ends, then
	// released for redelivery).
	Filter func(*broker.Message) bool
	// Topic returns where a message goes; default its
	// broker.HeaderOriginalTopic, else the dead-letter topic without
	// ".dlq".
	Topic func(*broker.Message) string
	// Idle ends the run when no dead letter arrives for this long (the
	// topic is drained); default 2s.
	Idle time.Duration
	// Progress, when set, is called every ProgressEvery messages and once
	// at the end (with Done set).
	Progress func(Progress)
	// ProgressEvery defaults to 100.
	ProgressEvery int
}

// Progress reports a Redrive run.
type Progress struct {
	// Moved: published to their topic, then acked in the dead-letter
	// topic.
	Moved int
	// Skipped: refused by Filter, left in the dead-letter topic.
	Skipped int
	// Elapsed since the run began.
	Elapsed time.Duration
	// Done is set on the last report.
	Done bool
}

// Redrive moves dead letters from sub (a subscriber on a dead-letter topic)
// back to their original topic with pub, one at a time: each is published
// first and acked in the dead-letter topic only once the publish was
// accepted, so a failure at any point leaves the message in one place or
// both (at-least-once), never in neither. A moved message keeps its ID, key,
// payload and headers, less the dead-letter headers of this package's
// middleware (reason, attempts, original topic, last failure; the first
// failure is kept), and gains HeaderRedrives.
//
// It runs until Limit messages were moved, the topic stays empty for Idle,
// or ctx is done, and returns what it did. It returns an error (with the
// progress so far) when a publish or an ack fails; the message concerned is
// released for redelivery. Redrive does not close sub or pub.
//
// Messages that Filter refuses are held unsettled until the end, so sub must
// allow enough unsettled deliveries (SubscriberOptions.Prefetch) and a long
// enough AckTimeout for a filtered run.
func Redrive(ctx context.Context, sub *broker.Subscriber, pub broker.Sender, opts RedriveOptions) (Progress, error) {
	if sub == nil || pub == nil {
		return Progress{}, errors.New("dlq: redrive needs a subscriber and a publisher")
	}
	if opts.Limit < 0 || opts.Idle < 0 || opts.ProgressEvery < 0 {
		return Progress{}, fmt.Errorf("dlq: redrive: Limit %d, Idle %v and ProgressEvery %d must be >= 0", opts.Limit, opts.Idle, opts.ProgressEvery)
	}
	if opts.Idle == 0 {
		opts.Idle = 2 * time.Second
	}
	if opts.ProgressEvery == 0 {
		opts.ProgressEvery = 100
	}
	start := time.Now()
	var p Progress
	var held []*broker.Delivery
	seen := map[string]bool{} // skipped IDs, so that a redelivered one is not counted twice
	report := func(done bool) {
		if opts.Progress != nil {
			p.Elapsed, p.Done = time.Since(start), done
			opts.Progress(p)
		}
	}
	defer func() {
		for _, d := range held {
			_ = d.Nack(context.WithoutCancel(ctx), 0)
		}
	}()
	for opts.Limit == 0 || p.Moved < opts.Limit {
		rctx, cancel := context.WithTimeout(ctx, opts.Idle)
		d, err := sub.Receive(rctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				break // drained
			}
			if ctx.Err() != nil {
				break
			}
			report(true)
			return p, fmt.Errorf("dlq: redrive: receive: %w", err)
		}
		m := d.Message()
		if opts.Filter != nil && !opts.Filter(m) {
			held = append(held, d)
			if !seen[m.ID] {
				seen[m.ID] = true
				p.Skipped++
				if (p.Moved+p.Skipped)%opts.ProgressEvery == 0 {
					report(false)
				}
			}
			continue
		}
		if err := move(ctx, d, pub, opts.Topic); err != nil {
			_ = d.Nack(context.WithoutCancel(ctx), 0)
			report(true)
			return p, err
		}
		p.Moved++
		if (p.Moved+p.Skipped)%opts.ProgressEvery == 0 {
			report(false)
		}
	}
	report(true)
	return p, nil
}

// move publishes d's message to its topic, then acks d.
func move(ctx context.Context, d *broker.Delivery, pub broker.Sender, topicOf func(*broker.Message) string) error {
	m := d.Message()
	back := m.Clone()
	back.PublishedAt = time.Time{}
	for _, h := range []string{broker.HeaderDeadReason, broker.HeaderDeadAttempts, broker.HeaderOriginalTopic,
		broker.HeaderLastFailure, broker.HeaderAttempt, broker.HeaderPublishedAt} {
		delete(back.Headers, h)
	}
	n, _ := strconv.Atoi(m.Header(HeaderRedrives))
	back.SetHeader(HeaderRedrives, strconv.Itoa(n+1))
	topic := m.Header(broker.HeaderOriginalTopic)
	if topicOf != nil {
		topic = topicOf(m)
	} else if topic == "" {
		topic = strings.TrimSuffix(m.Topic, Suffix)
	}
	if topic == "" || topic == m.Topic {
		return fmt.Errorf("dlq: redrive: message %s has no original topic to go back to", m.ID)
	}
	if err := pub.Publish(ctx, topic, back); err != nil {
		return fmt.Errorf("dlq: redrive: publishing %s to %s: %w", m.ID, topic, err)
	}
	if err := d.Ack(ctx); err != nil {
		return fmt.Errorf("dlq: redrive: %s was published to %s but its ack failed (it will be redriven again): %w", m.ID, topic, err)
	}
	return nil
}
