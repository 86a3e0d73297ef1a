// Package dlq dead-letters messages that keep failing: after the delivery's
// attempt count reaches MaxAttempts, or at once for a permanent error
// (broker.Permanent, or retry giving up), it publishes a copy to the
// dead-letter topic — by default the message's topic plus ".dlq" — and acks
// the original. Redrive moves dead letters back.
//
// A dead letter keeps the message's ID, key, payload and headers, and gains
// broker.HeaderDeadReason (the error, cut to Options.MaxReason bytes),
// HeaderDeadAttempts, HeaderOriginalTopic, HeaderFirstFailure and
// HeaderLastFailure (RFC 3339 with nanoseconds). The original is acked only
// after the dead letter was durably published; when publishing fails, the
// handler's error (joined with the publish error) is returned, so the
// original is nacked and nothing is lost.
//
// Native dead-lettering: when the adapter dead-letters by itself
// (semantics.Capabilities.NativeDeadLetter — SQS RedrivePolicy, RabbitMQ
// x-delivery-limit with a DLX, Pub/Sub DeadLetterPolicy) and the subscriber
// was created with SubscriberOptions.MaxAttempts, set Options.Native: dlq
// then leaves the attempt limit to the broker and only publishes permanent
// failures, which the broker has no way to be told about (the portable
// Delivery API has no "reject without requeue"). Set
// Native: b.Capabilities().NativeDeadLetter.
//
// Attempts come from Message.Attempt. Where the adapter counts none, put
// retry (which counts) inside dlq: its exhaustion is permanent.
//
// On a broker that refuses unroutable messages (RabbitMQ with the mandatory
// flag), the dead-letter topic must exist before anything is dead-lettered:
// create its subscription first.
//
// Order: otel -> dlq -> retry -> dedupe -> handler. dlq must be outside
// dedupe (see package middleware).
package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
)

// HeaderRedrives counts how many times Redrive moved a message back from a
// dead-letter topic.
const HeaderRedrives = broker.HeaderPrefix + "redrives"

// Suffix is appended to a topic to name its dead-letter topic.
const Suffix = broker.DeadLetterSuffix

// Topic returns the default dead-letter topic of topic.
func Topic(topic string) string { return broker.DeadLetterTopic(topic) }

// Options tune the dlq middleware.
type Options struct {
	// MaxAttempts dead-letters a message whose failed delivery had
	// Message.Attempt >= MaxAttempts. 0 dead-letters permanent failures
	// only.
	MaxAttempts int
	// Topic returns a message's dead-letter topic; default Topic(the
	// original topic).
	Topic func(*broker.Message) string
	// Native leaves the attempt limit to the broker's own dead-lettering
	// (see the package doc).
	Native bool
	// OnDeadLetter observes each message dead-lettered, with the reason.
	OnDeadLetter func(msg *broker.Message, reason error)
	// MaxReason caps the bytes of the reason header; default 1024.
	MaxReason int
}

// New returns the dlq middleware publishing with pub. It panics when pub is
// nil or an option is negative.
func New(pub broker.Sender, opts Options) broker.Middleware {
	if pub == nil {
		panic("dlq: publisher is nil")
	}
	if opts.MaxAttempts < 0 || opts.MaxReason < 0 {
		panic(fmt.Sprintf("dlq: MaxAttempts %d and MaxReason %d must be >= 0", opts.MaxAttempts, opts.MaxReason))
	}
	if opts.MaxReason == 0 {
		opts.MaxReason = 1024
	}
	return func(next broker.Handler) broker.Handler {
		return &handler{next: next, pub: pub, o: opts}
	}
}

type handler struct {
	next broker.Handler
	pub  broker.Sender
	o    Options
}

// Stage names this middleware for middleware.Check.
func (h *handler) Stage() string { return "dlq" }

// Unwrap returns the handler dlq wraps.
func (h *handler) Unwrap() broker.Handler { return h.next }

func (h *handler) Handle(ctx context.Context, m *broker.Message) error {
	err := h.next.Handle(ctx, m)
	if err == nil || ctx.Err() != nil || errors.Is(err, broker.ErrInFlight) {
		return err // shutdown and in-flight copies are not failures of the message
	}
	permanent := broker.IsPermanent(err)
	if !permanent && (h.o.Native || h.o.MaxAttempts == 0 || m.Attempt < h.o.MaxAttempts) {
		return err
	}
	if perr := h.deadLetter(ctx, m, err); perr != nil {
		return errors.Join(err, perr)
	}
	if h.o.OnDeadLetter != nil {
		h.o.OnDeadLetter(m, err)
	}
	return nil
}

func (h *handler) deadLetter(ctx context.Context, m *broker.Message, reason error) error {
	now := time.Now()
	dead := m.Clone()
	dead.PublishedAt = time.Time{}
	delete(dead.Headers, broker.HeaderAttempt) // a fresh count if it is redriven
	delete(dead.Headers, broker.HeaderPublishedAt)
	dead.SetHeader(broker.HeaderDeadReason, truncate(reason.Error(), h.o.MaxReason))
	dead.SetHeader(broker.HeaderDeadAttempts, strconv.Itoa(m.Attempt))
	if dead.Header(broker.HeaderOriginalTopic) == "" {
		dead.SetHeader(broker.HeaderOriginalTopic, m.Topic)
	}
	if dead.Header(broker.HeaderFirstFailure) == "" { // kept from an earlier dead-lettering
		first := now
		var dated interface{ FirstFailure() time.Time }
		if errors.As(reason, &dated) && !dated.FirstFailure().IsZero() && dated.FirstFailure().Before(now) {
			first = dated.FirstFailure()
		}
		dead.SetHeader(broker.HeaderFirstFailure, first.UTC().Format(time.RFC3339Nano))
	}
	dead.SetHeader(broker.HeaderLastFailure, now.UTC().Format(time.RFC3339Nano))
	topic := Topic(dead.Header(broker.HeaderOriginalTopic))
	if h.o.Topic != nil {
		topic = h.o.Topic(m)
	}
	if err := h.pub.Publish(ctx, topic, dead); err != nil {
		return fmt.Errorf("dlq: publishing to %s: %w", topic, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 { // drop a rune cut in half
		if r, size := utf8.DecodeLastRuneInString(s); r != utf8.RuneError || size > 1 {
			break
		}
		s = s[:len(s)-1]
	}
	return s
}
