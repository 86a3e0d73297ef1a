package rabbitmq

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// A delayed nack publishes a copy of the message, with confirms, to a delay
// queue "<queue>.qk-delay-<ms>ms" whose message TTL is the delay and whose
// dead-letter target is the group's queue (through the default exchange),
// then acks the original. Every message of one delay queue has the same
// TTL, so none waits behind a longer one; delays are rounded up to ten
// steps per decade (1234ms waits 1500ms, see delayMillis) to keep the
// number of delay queues small, and a delay queue unused for an hour past its TTL deletes
// itself (x-expires). With quorum queues the delay queue is a quorum queue
// that dead-letters at-least-once.
const delayMarker = ".qk-delay-"

// headerDelayTopic keeps the original topic of a message that went
// through a delay queue, for the dead-letter headers.
const headerDelayTopic = "queuekit-rabbitmq-topic"

// maxDelay is the longest Nack delay: RabbitMQ refuses a message TTL or
// queue expiry over 2^32-1 ms, and a delay queue expires an hour after its
// TTL. Its name takes at most 10 digits (see maxDelaySuffix).
const maxDelay = 4_000_000 * time.Second

// redeclareAfter is how old a delay queue declaration may be before it is
// declared again (which resets its x-expires clock).
const redeclareAfter = 10 * time.Minute

func isDelayQueue(name string) bool { return strings.Contains(name, delayMarker) }

// delaySteps are the delay buckets of one decade, in tenths of it.
var delaySteps = [...]int64{10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100}

// delayMillis rounds d up to whole milliseconds, and from 10ms on up to
// one of ten steps per decade (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k ms):
// at most 25% longer, and few delay queues even for jittered backoffs.
func delayMillis(d time.Duration) int64 {
	ms := int64((d + time.Millisecond - 1) / time.Millisecond)
	if ms < 10 {
		return max(ms, 1)
	}
	decade := int64(1) // ms / decade is in [10, 100)
	for ms/decade >= 100 {
		decade *= 10
	}
	for _, step := range delaySteps {
		if step*decade >= ms {
			return step * decade
		}
	}
	panic("unreachable")
}

// delayQueues remembers when each delay queue was last declared.
type delayQueues struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (q *delayQueues) fresh(name string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	t, ok := q.at[name]
	return ok && time.Since(t) < redeclareAfter
}

func (q *delayQueues) mark(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.at == nil {
		q.at = make(map[string]time.Time)
	}
	q.at[name] = time.Now()
}

func (q *delayQueues) drop(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.at, name)
}

// forget drops and returns the delay queues of queue (not the schedule
// queues of a topic named like it).
func (q *delayQueues) forget(queue string) []string {
	return q.forgetPrefix(queue+delayMarker, queue+schedMarker)
}

// forgetPrefix drops and returns the queues whose names start with prefix
// and not with except (if not empty).
func (q *delayQueues) forgetPrefix(prefix, except string) []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	var names []string
	for name := range q.at {
		if strings.HasPrefix(name, prefix) && (except == "" || !strings.HasPrefix(name, except)) {
			names = append(names, name)
			delete(q.at, name)
		}
	}
	return names
}

// retryChannel returns the subscriber's confirm-mode channel for delayed
// copies, on the publishing connection.
func (s *subscriber) retryChannel(ctx context.Context) (*pubChan, error) {
	s.retryMu.Lock()
	defer s.retryMu.Unlock()
	if s.retry != nil && !s.retry.ch.IsClosed() {
		return s.retry, nil
	}
	pc, err := s.b.openPubChan(ctx, s.prefetch)
	if err != nil {
		return nil, err
	}
	s.retry = pc
	return pc, nil
}

// delay publishes a copy of d to the delay queue for delay and waits for
// the broker's confirmation.
func (s *subscriber) delay(ctx context.Context, d *delivery, delay time.Duration) error {
	const op = "rabbitmq: delayed nack"
	ms := delayMillis(delay)
	name := s.queue + delayMarker + strconv.FormatInt(ms, 10) + "ms"
	pc, err := s.retryChannel(ctx)
	if err != nil {
		return err
	}
	if !s.b.delayQueues.fresh(name) {
		if err := s.declareDelay(ctx, name, ms); err != nil {
			return wrap(op+": declare "+strconv.Quote(name), err)
		}
		s.b.delayQueues.mark(name)
		s.b.declared(name)
		s.b.record(ctx, s.opts.Topic, entry{Role: RoleDelay, Topic: s.opts.Topic, Group: s.opts.Group, Queue: name})
	}
	raw := &d.raw
	h := make(amqp.Table, len(raw.Headers)+2)
	for k, v := range raw.Headers {
		switch k {
		case "x-delivery-count":
		case "x-death":
			// RabbitMQ adds an x-death entry per delay queue the message
			// goes through: keep only the others, so that a message
			// nacked with many different delays does not outgrow a
			// header frame (RabbitMQ adds the new entry itself).
			if deaths := withoutDelayDeaths(v); len(deaths) > 0 {
				h[k] = deaths
			}
		default:
			h[k] = v
		}
	}
	h[headerBaseAttempt] = int64(d.msg.Attempt)
	if _, ok := h[headerDelayTopic]; !ok {
		h[headerDelayTopic] = s.opts.Topic
	}
	k := routeKey{raw.MessageId, name}
	pc.register(k)
	dc, err := pc.publish("", name, amqp.Publishing{
		Headers:         h,
		ContentType:     raw.ContentType,
		ContentEncoding: raw.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        raw.Priority,
		CorrelationId:   raw.CorrelationId,
		ReplyTo:         raw.ReplyTo,
		MessageId:       raw.MessageId,
		Timestamp:       raw.Timestamp,
		Type:            raw.Type,
		AppId:           raw.AppId,
		Body:            raw.Body,
	}, false)
	if err != nil {
		pc.settle(k)
		return wrap(op, err)
	}
	select {
	case <-dc.Done():
	case <-ctx.Done():
		go func() { <-dc.Done(); pc.settle(k) }()
		return driver.Canceled(op, ctx.Err())
	}
	returned := pc.settle(k)
	switch {
	case returned:
		s.b.delayQueues.drop(name)
		return driver.Errorf(semantics.NotFound, op, "delay queue %q is gone", name)
	case !dc.Acked():
		return driver.Errorf(semantics.Transient, op, "delayed copy not confirmed: %w", pc.cause())
	}
	return nil
}

// declareDelay declares the delay queue name, of ms, on a channel of its
// own: on the retry channel, which other deliveries' delayed nacks publish
// on concurrently, it could corrupt a publish (see pubChan.sendMu), and a
// refused declaration would close the channel under their unconfirmed
// copies.
func (s *subscriber) declareDelay(ctx context.Context, name string, ms int64) error {
	ch, _, err := s.b.pub.channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	args := amqp.Table{
		"x-queue-type":              s.b.opts.QueueType,
		"x-message-ttl":             ms,
		"x-expires":                 ms + time.Hour.Milliseconds(),
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": s.queue,
	}
	if s.quorum {
		args["x-dead-letter-strategy"] = "at-least-once"
		args["x-overflow"] = "reject-publish"
	}
	_, err = ch.QueueDeclare(name, true, false, false, false, args)
	return err
}

// withoutDelayDeaths returns the x-death entries of v that are not the
// expiry of a delay queue.
func withoutDelayDeaths(v any) []any {
	deaths, _ := v.([]any)
	var kept []any
	for _, e := range deaths {
		if t, ok := e.(amqp.Table); ok {
			if q, _ := t["queue"].(string); isDelayQueue(q) {
				continue
			}
		}
		kept = append(kept, e)
	}
	return kept
}
