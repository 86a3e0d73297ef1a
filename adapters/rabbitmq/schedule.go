package rabbitmq

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Scheduled delivery (Message.DeliverAt) goes through TTL delay queues, as
// delayed nacks do, with one more hop that keeps the no-group rule:
//
//	publisher --(routing key topic, mandatory)--> "<exchange>.qk-schedule"
//	    (same type as the exchange; every group's declaration binds it, with
//	    the group's topic, to:)
//	--> "<exchange>.qk-schedule-route" (headers exchange)
//	    (routes on the queuekit-rabbitmq-schedule header, to:)
//	--> "<topic>.qk-delay-s<ms>ms" (a schedule queue: x-message-ttl ms,
//	    dead-lettering to the exchange with the topic as routing key)
//	--> the exchange --> the groups' queues, when the message expires.
//
// A scheduled message therefore reaches a schedule queue only when a group
// was declared on its topic; otherwise RabbitMQ returns it, and Publish
// fails with ErrNoGroup as it does for a message published at once. Each
// message carries its own expiration, its remaining delay rounded up to
// the millisecond when it is sent, so it is never early. Schedule queues
// are per topic and per delay bucket (the ten steps per decade of
// delayMillis: a message goes to the smallest bucket at least its delay),
// and RabbitMQ expires messages only at the head of a queue: a message
// behind one of its queue that is due later waits for it, at most the
// bucket's width (under 25% of its delay). Schedule queues are recorded in
// the topic's registry (RoleSchedule), deleted by DeleteTopic, and delete
// themselves an hour after their TTL once unused (x-expires).

// schedMarker starts the suffix of a schedule queue's name. It extends
// delayMarker, so that group queue names, which may not contain
// delayMarker, never collide with it, and isDelayQueue (x-death entries)
// covers schedule queues too.
const schedMarker = delayMarker + "s"

// maxSchedSuffix is the longest suffix of a schedule queue: schedMarker,
// up to 10 digits, "ms".
const maxSchedSuffix = len(schedMarker) + 10 + len("ms")

// headerSchedule routes a scheduled message to its schedule queue through
// the headers exchange; the adapter removes it on delivery.
const headerSchedule = "queuekit-rabbitmq-schedule"

// Suffixes of the two exchanges of scheduled delivery.
const (
	schedExchangeSuffix = ".qk-schedule"
	schedRouterSuffix   = ".qk-schedule-route"
)

// fitName returns base+suffix, or when that is over maxNameLen bytes,
// shorten(base) and suffix.
func fitName(base, suffix string) string {
	return shorten(base, maxNameLen-len(suffix)) + suffix
}

// shorten returns s when it has at most limit bytes, else a prefix of it,
// "~" and a hash of s, in limit bytes.
func shorten(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	tag := "~" + hex.EncodeToString(sum[:8])
	keep := limit - len(tag)
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return s[:keep] + tag
}

// scheduleBase is the part of topic's schedule queue names before
// schedMarker.
func scheduleBase(topic string) string { return shorten(topic, maxNameLen-maxSchedSuffix) }

// scheduleQueue names topic's schedule queue for delays of bucket ms.
func scheduleQueue(topic string, bucket int64) string {
	return scheduleBase(topic) + schedMarker + strconv.FormatInt(bucket, 10) + "ms"
}

// schedExchange and schedRouter name the exchanges of scheduled delivery.
func (b *Broker) schedExchange() string { return fitName(b.opts.Exchange, schedExchangeSuffix) }
func (b *Broker) schedRouter() string   { return fitName(b.opts.Exchange, schedRouterSuffix) }

// declareScheduleExchanges declares the two exchanges, durable.
func (b *Broker) declareScheduleExchanges(ch *amqp.Channel) error {
	if err := ch.ExchangeDeclare(b.schedExchange(), b.opts.ExchangeType, true, false, false, false, nil); err != nil {
		return err
	}
	return ch.ExchangeDeclare(b.schedRouter(), amqp.ExchangeHeaders, true, false, false, false, nil)
}

// bindSchedule makes topic schedulable: the schedule exchange routes its
// messages on to the router, as the exchange routes them to topic's groups.
// Every declaration of a group calls it. It never fails: a broker that
// refuses (permissions) gets a warning, logged once, and scheduled
// publishes to topic then fail with ErrNoGroup.
func (b *Broker) bindSchedule(ctx context.Context, topics ...string) {
	ch, _, err := b.sub.channel(ctx)
	if err == nil {
		defer ch.Close()
		if err = b.declareScheduleExchanges(ch); err == nil {
			for _, topic := range topics {
				if err = ch.ExchangeBind(b.schedRouter(), topic, b.schedExchange(), false, nil); err != nil {
					break
				}
			}
		}
	}
	if err != nil && b.schedWarned.CompareAndSwap(false, true) {
		b.opts.Logger.Warn("queuekit/rabbitmq: cannot bind the topic for scheduled delivery; a Publish with DeliverAt to it fails with ErrNoGroup",
			"exchange", b.schedExchange(), "topics", topics, "error", err)
	}
}

// unbindSchedule undoes bindSchedule(topic), once topic has no group left.
func (b *Broker) unbindSchedule(ctx context.Context, op, topic string) error {
	ch, _, err := b.sub.channel(ctx)
	if err != nil {
		return wrap(op, err)
	}
	defer ch.Close()
	err = ch.ExchangeUnbind(b.schedRouter(), topic, b.schedExchange(), false, nil)
	if err != nil && kindOf(err) != semantics.NotFound {
		return wrap(op+": unbind the schedule of "+strconv.Quote(topic), err)
	}
	return nil
}

// slot is where one message of a Publish call goes: queue is "" for a
// message due at once.
type slot struct {
	queue string
}

// schedule returns the schedule queue of each message of msgs due later
// (nil when none is), after declaring those not declared lately.
func (b *Broker) schedule(ctx context.Context, op, topic string, msgs []*driver.Message) ([]slot, error) {
	var slots []slot
	var todo map[string]int64
	now := time.Now()
	for i, m := range msgs {
		if m.DeliverAt.IsZero() {
			continue
		}
		d := m.DeliverAt.Sub(now)
		if d <= 0 {
			continue
		}
		if b.opts.Passive {
			return nil, driver.Errorf(semantics.Unsupported, op, "message %s: scheduled delivery needs the adapter's own delay queues, which passive=true does not declare; schedule it through the transactional outbox (outbox.AddAt)", m.ID)
		}
		if d > maxDelay {
			return nil, driver.Errorf(semantics.InvalidArgument, op, "message %s: DeliverAt is %v ahead, over RabbitMQ's longest message TTL, %v", m.ID, d.Round(time.Second), maxDelay)
		}
		if slots == nil {
			slots = make([]slot, len(msgs))
		}
		bucket := delayMillis(d)
		q := scheduleQueue(topic, bucket)
		slots[i] = slot{queue: q}
		if !b.delayQueues.fresh(q) {
			if todo == nil {
				todo = make(map[string]int64)
			}
			todo[q] = bucket
		}
	}
	if len(todo) == 0 {
		return slots, nil
	}
	ch, _, err := b.pub.channel(ctx)
	if err != nil {
		return nil, wrap(op, err)
	}
	defer ch.Close()
	if err := b.declareScheduleExchanges(ch); err != nil {
		return nil, wrap(op+": schedule exchanges", err)
	}
	for q, bucket := range todo {
		args := amqp.Table{
			"x-queue-type":              b.opts.QueueType,
			"x-message-ttl":             bucket,
			"x-expires":                 bucket + time.Hour.Milliseconds(),
			"x-dead-letter-exchange":    b.opts.Exchange,
			"x-dead-letter-routing-key": topic,
		}
		if b.opts.QueueType == Quorum {
			args["x-dead-letter-strategy"] = "at-least-once"
			args["x-overflow"] = "reject-publish"
		}
		if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
			return nil, wrap(op+": declare schedule queue "+strconv.Quote(q), err)
		}
		b.declared(q)
		if err := ch.QueueBind(q, "", b.schedRouter(), false, amqp.Table{"x-match": "all", headerSchedule: q}); err != nil {
			return nil, wrap(op+": bind schedule queue "+strconv.Quote(q), err)
		}
		b.delayQueues.mark(q)
	}
	return slots, nil
}

// recordSchedule records in topic's registry the schedule queues that
// messages of pend went through, those not in failed: only once a message
// got through, so that scheduling to a topic without a group leaves no
// registry behind (the schedule queue declared for it expires by itself).
func (b *Broker) recordSchedule(ctx context.Context, topic string, pend []pending, failed []driver.PublishFailure) {
	var es []entry
next:
	for i, pd := range pend {
		if pd.sched == "" {
			continue
		}
		for _, f := range failed {
			if f.Index == i {
				continue next
			}
		}
		e := entry{Role: RoleSchedule, Topic: topic, Queue: pd.sched}
		if !slices.Contains(es, e) {
			es = append(es, e)
		}
	}
	b.record(ctx, topic, es...)
}

// millisUntil is the time until t in whole milliseconds, rounded up; 0 when
// t has come.
func millisUntil(t time.Time) int64 {
	d := time.Until(t)
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
