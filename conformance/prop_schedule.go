package conformance

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// What publish.delay schedules, and how it judges.
const (
	// scheduleShort and scheduleLong are the delays of the two scheduled
	// messages: whole seconds, so that a broker counting delays in
	// seconds (SQS DelaySeconds) is tried as it is used.
	scheduleShort = time.Second
	scheduleLong  = 2 * time.Second
	// scheduleSlack is how much earlier than its DeliverAt a message may
	// be seen: the millisecond of brokers that keep delays and timestamps
	// in whole milliseconds (RabbitMQ's TTLs). Nothing more: an adapter
	// whose broker counts coarser (SQS, whole seconds) must round up.
	scheduleSlack = time.Millisecond
	// scheduleMinTolerance is the least a message may be late (see
	// scheduleTolerance).
	scheduleMinTolerance = 2 * time.Second
)

// scheduleTolerance is how late a message may be delivered: after its
// DeliverAt for a scheduled one, after Publish returned for one due at
// once. The larger of 2s and Harness.AckTimeout, the time scale the
// harness says its broker's timers work at.
func scheduleTolerance(h Harness) time.Duration { return max(scheduleMinTolerance, h.AckTimeout) }

// publishDelay publishes, in one call and under one key, a message
// scheduled 2s ahead, one scheduled 1s ahead, one with DeliverAt an hour in
// the past and one without DeliverAt, and receives them (raw Receive, each
// acked). Every time is read on the suite's clock (monotonic): DeliverAt
// from just before Publish, delivery when Receive returns.
//
//   - Never early: no message is received before its DeliverAt, less
//     scheduleSlack. This compares with DeliverAt, not with the time
//     Publish returned: an adapter turns DeliverAt into a delay when it
//     sends, so a correct one may deliver less than the nominal delay after
//     a slow Publish returned, but never before DeliverAt.
//   - Not late: each scheduled message arrives within scheduleTolerance of
//     the later of its DeliverAt and the time Publish returned.
//   - Not held back: the unscheduled and the past-dated messages arrive
//     within scheduleTolerance of Publish returning and before either
//     scheduled message, though all four share a key and were published
//     after the scheduled ones.
//   - Publish does not wait for the schedule: it returns before the
//     earliest DeliverAt.
//   - A delivered message carries a zero DeliverAt, and is a first
//     delivery (Attempt 1 where AttemptCount is claimed).
func publishDelay(p *probe) error {
	if limit := p.caps.MaxDelay; limit > 0 && limit < scheduleLong {
		return fmt.Errorf("the adapter claims ScheduledDelivery with MaxDelay %v, under the %v this property schedules", limit, scheduleLong)
	}
	tolerance := scheduleTolerance(p.h)
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	type plan struct {
		what  string
		delay time.Duration // 0: DeliverAt unset
	}
	plans := []plan{
		{"scheduled " + scheduleLong.String() + " ahead", scheduleLong},
		{"scheduled " + scheduleShort.String() + " ahead", scheduleShort},
		{"dated an hour in the past", -time.Hour},
		{"unscheduled", 0},
	}
	msgs := p.messages(0, len(plans), 1) // one key
	index := make(map[string]int, len(msgs))
	for i, m := range msgs {
		index[m.ID] = i
	}
	var mu sync.Mutex
	got := make([]time.Time, len(msgs))
	var order []int // first deliveries, in the order received
	stop := p.receive(sub, func(d *broker.Delivery) {
		at := time.Now()
		m := d.Message()
		p.led.Delivered(m.ID)
		i, ok := index[m.ID]
		if !ok {
			p.failf("delivered a message that was not published: ID %q", m.ID)
			p.ack(d)
			return
		}
		mu.Lock()
		first := got[i].IsZero()
		if first {
			got[i] = at
			order = append(order, i)
		}
		mu.Unlock()
		if first {
			if !m.DeliverAt.IsZero() {
				p.failf("message %s (%s) delivered with DeliverAt %v; a delivered message's DeliverAt is zero on every adapter", m.ID, plans[i].what, m.DeliverAt)
			}
			if p.caps.AttemptCount && m.Attempt != 1 {
				p.failf("message %s (%s): first delivery has Attempt %d, want 1", m.ID, plans[i].what, m.Attempt)
			}
		}
		p.ack(d)
		p.led.Handled(m.ID)
	})
	defer stop()

	for _, m := range msgs {
		p.led.Published(m.ID, m.Key)
	}
	base := time.Now()
	deliverAt := make([]time.Time, len(msgs))
	for i, pl := range plans {
		if pl.delay != 0 {
			deliverAt[i] = base.Add(pl.delay)
			msgs[i].DeliverAt = deliverAt[i]
		}
	}
	if err := pub.Publish(p.ctx, p.topic, msgs...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	returned := time.Now()
	if earliest := base.Add(scheduleShort); !returned.Before(earliest) {
		p.failf("Publish returned %v after it was called, not before the earliest DeliverAt: it must return once the broker accepted the messages, not wait for their time", returned.Sub(base).Round(time.Millisecond))
	}
	if err := p.waitAll(p.led, "every message, scheduled or not, to be delivered"); err != nil {
		return err
	}

	mu.Lock()
	defer mu.Unlock()
	var seen []string
	for i, pl := range plans {
		id := msgs[i].ID
		if pl.delay > 0 {
			if early := deliverAt[i].Sub(got[i]); early > scheduleSlack {
				p.failf("message %s (%s) delivered %v before its DeliverAt: early", id, pl.what, early.Round(time.Microsecond))
			}
			from := later(deliverAt[i], returned)
			if late := got[i].Sub(from); late > tolerance {
				p.failf("message %s (%s) delivered %v after its DeliverAt, over the tolerance of %v", id, pl.what, late.Round(time.Millisecond), tolerance)
			}
			seen = append(seen, fmt.Sprintf("%s: %v after DeliverAt", pl.what, got[i].Sub(deliverAt[i]).Round(10*time.Microsecond)))
			continue
		}
		if late := got[i].Sub(returned); late > tolerance {
			p.failf("message %s (%s) delivered %v after Publish returned, over the tolerance of %v: held back", id, pl.what, late.Round(time.Millisecond), tolerance)
		}
		seen = append(seen, fmt.Sprintf("%s: %v after Publish returned", pl.what, max(got[i].Sub(returned), 0).Round(10*time.Microsecond)))
	}
	// The messages due at once come before the scheduled ones (that were
	// not early: an early one was reported above).
	for pos, i := range order {
		if plans[i].delay > 0 {
			continue
		}
		var before []string
		for _, j := range order[:pos] {
			if plans[j].delay > 0 && deliverAt[j].Sub(got[j]) <= scheduleSlack {
				before = append(before, plans[j].what)
			}
		}
		if len(before) > 0 {
			p.failf("message %s (%s) was delivered after the message(s) %s: held back behind scheduled messages of its key", msgs[i].ID, plans[i].what, strings.Join(before, " and "))
		}
	}
	p.notef("Publish took %v; %s (never early by more than %v, late by at most %v)",
		returned.Sub(base).Round(10*time.Microsecond), strings.Join(seen, ", "), scheduleSlack, tolerance)
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
