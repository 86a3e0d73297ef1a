package conformance

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// group.competing publishes rounds of competingRound messages until both
// subscribers have had a share, at most competingRounds rounds, one every
// competingPace at the most: a new member may take a while to join a group
// (a Kafka rebalance), and that is broker state the suite can only poll.
// Every message is published by a Publish call of its own (a batch may go
// whole to one receive: a long poll that was waiting first, so that nine
// batches were nine coin tosses, all won by one subscriber once in a CI
// run on SQS), and rounds alternate between calls one after another and
// the round's calls all at once, because brokers share out differently:
// pstest offers what arrived since its last 10 ms tick to its streams in
// the order they connected, starting at the first each tick, so messages
// published one after another all went to the first subscriber for nine
// rounds once in a CI run; while the memory broker hands what is ready
// to the receiver that waited first, so ten messages published at once
// went to one subscriber for nine rounds in about one run in three.
// Sixteen rounds give each pattern eight tries; a broker that shares
// takes one or two.
const (
	competingRound  = 10
	competingRounds = 16
	competingPace   = 250 * time.Millisecond
)

func groupCompeting(p *probe) error {
	type rec struct {
		sub     int
		at      time.Time
		attempt int
	}
	var mu sync.Mutex
	recs := map[string][]rec{}
	seenBy := [2]map[string]bool{{}, {}}
	var consumers []*consumer
	for i := 0; i < 2; i++ {
		sub, err := p.subscribe("g", nil)
		if err != nil {
			return err
		}
		consumers = append(consumers, p.consume(sub, broker.ConsumeOptions{Concurrency: 2},
			func(_ context.Context, m *broker.Message) error {
				p.led.Delivered(m.ID)
				mu.Lock()
				seenBy[i][m.ID] = true
				recs[m.ID] = append(recs[m.ID], rec{sub: i, at: time.Now(), attempt: m.Attempt})
				mu.Unlock()
				p.led.Handled(m.ID)
				return nil
			}, nil))
	}
	defer func() {
		for _, c := range consumers {
			if err := c.stop(); err != nil {
				p.failf("Consume: %v", err)
			}
		}
	}()
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	shared := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seenBy[0]) > 0 && len(seenBy[1]) > 0
	}
	rounds := 0
	for rounds < competingRounds && !shared() {
		if rounds > 0 {
			select {
			case <-time.After(competingPace):
			case <-p.ctx.Done():
			}
		}
		msgs := p.messages(rounds*competingRound, competingRound, 0)
		publish := func() error { return p.publish(pub, p.led, msgs, 1) }
		if rounds%2 == 1 {
			publish = func() error { return p.publishConcurrently(pub, p.led, msgs) }
		}
		if err := publish(); err != nil {
			return err
		}
		rounds++
		if err := p.waitAll(p.led, "every message to be handled by one of the group's subscribers"); err != nil {
			return err
		}
	}
	mu.Lock()
	defer mu.Unlock()
	total := rounds * competingRound
	got := [2]int{len(seenBy[0]), len(seenBy[1])}
	if got[0] == 0 || got[1] == 0 {
		return fmt.Errorf("one subscriber of the group handled all %d messages (%d and %d): the group's subscribers do not compete", total, got[0], got[1])
	}
	// A message delivered to both subscribers as the same attempt was
	// copied, not competed for. Where attempts are not counted, a second
	// subscriber's delivery within half an AckTimeout of the first counts
	// as a copy: nothing was nacked and every handler acked at once, so
	// only an ack timeout could explain a redelivery.
	var both []string
	for id, rs := range recs {
		for _, r := range rs[1:] {
			if r.sub == rs[0].sub {
				continue
			}
			if p.caps.AttemptCount && r.attempt == rs[0].attempt ||
				!p.caps.AttemptCount && r.at.Sub(rs[0].at) < p.h.AckTimeout/2 {
				both = append(both, id)
				break
			}
		}
	}
	if len(both) > 0 {
		sort.Strings(both)
		return fmt.Errorf("%d of %d messages were delivered to both subscribers of one group at once: ids %s", len(both), total, Sample(both, 5))
	}
	p.notef("%d messages split %d / %d between the group's two subscribers", total, got[0], got[1])
	return nil
}

func groupFanout(p *probe) error {
	const n = 20
	leds := []*tally{p.led, newTally(p)}
	names := []string{"g1", "g2"}
	for i, name := range names {
		sub, err := p.subscribe(name, nil)
		if err != nil {
			return err
		}
		led := leds[i]
		stop := p.receive(sub, func(d *broker.Delivery) {
			id := d.Message().ID
			led.Delivered(id)
			p.ack(d)
			led.Handled(id)
		})
		defer stop()
	}
	msgs := p.messages(0, n, 0)
	for _, m := range msgs {
		leds[1].Published(m.ID, m.Key)
	}
	if err := p.publishNew(msgs, n); err != nil {
		return err
	}
	werr := p.wait("both groups to handle every message", func() bool { return leds[0].complete() && leds[1].complete() })
	c := &counts{published: n, handled: n}
	var problems []string
	for i, led := range leds {
		r := led.Report()
		c.handled = min(c.handled, r.Handled)
		c.lost += len(r.Lost)
		c.duplicates += r.Duplicates
		if len(r.Lost) > 0 || len(r.Unexpected) > 0 {
			problems = append(problems, fmt.Sprintf("group %s: %s", p.group(names[i]), p.summary(r)))
		}
	}
	p.counts = c
	if werr != nil {
		return fmt.Errorf("%v (%v)", joinDetail(problems), werr)
	}
	p.notef("both groups handled all %d messages", n)
	return nil
}

// orderKeys is the number of keys order.per-key spreads its messages over.
const orderKeys = 8

func orderPerKey(p *probe) error {
	r, err := p.runOrdered(func(_ context.Context, m *broker.Message) error {
		p.led.Delivered(m.ID)
		p.led.Handled(m.ID)
		return nil
	})
	if err != nil {
		return err
	}
	if len(r.Reordered) > 0 {
		return fmt.Errorf("%d of %d messages were handled after a later message of their key: ids %s", len(r.Reordered), p.h.Messages, Sample(r.Reordered, 5))
	}
	p.notef("%d messages over %d keys handled in publish order; %d duplicates", p.h.Messages, orderKeys, r.Duplicates)
	return nil
}

// runOrdered subscribes under per-key order, consumes with h (Concurrency
// 4), publishes Harness.Messages over orderKeys keys in batches of 50, and
// waits until every message was handled.
func (p *probe) runOrdered(h broker.HandlerFunc) (LedgerReport, error) {
	sub, err := p.subscribe("g", func(o *broker.SubscriberOptions) { o.Ordering = semantics.PerKey })
	if err != nil {
		return LedgerReport{}, err
	}
	c := p.consume(sub, broker.ConsumeOptions{Concurrency: 4}, h, nil)
	defer c.stop()
	if err := p.publishNew(p.messages(0, p.h.Messages, orderKeys), 50); err != nil {
		return LedgerReport{}, err
	}
	err = p.waitAll(p.led, "every message to be handled")
	if serr := c.stop(); serr != nil {
		p.failf("Consume: %v", serr)
	}
	return p.led.Report(), err
}
