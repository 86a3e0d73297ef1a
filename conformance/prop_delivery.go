package conformance

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func aloNackRedelivers(p *probe) error {
	const n = 10
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	seen := map[string]int{}
	stop := p.receive(sub, func(d *broker.Delivery) {
		m := d.Message()
		p.led.Delivered(m.ID)
		mu.Lock()
		k := seen[m.ID]
		seen[m.ID]++
		mu.Unlock()
		if k == 0 {
			if p.caps.AttemptCount && m.Attempt != 1 {
				p.failf("first delivery of %s has Attempt %d, want 1", m.ID, m.Attempt)
			}
			p.nack(d, 0)
			return
		}
		if p.caps.AttemptCount && m.Attempt < 2 {
			p.failf("redelivery of %s after Nack has Attempt %d, want >= 2", m.ID, m.Attempt)
		}
		p.ack(d)
		p.led.Handled(m.ID)
	})
	defer stop()
	if err := p.publishNew(p.messages(0, n, 0), n); err != nil {
		return err
	}
	if err := p.waitAll(p.led, "every nacked message to be redelivered"); err != nil {
		return fmt.Errorf("messages nacked with no delay did not come back: %w", err)
	}
	return nil
}

func aloCrashRedelivers(p *probe) error {
	const n = 5
	crashed, err := p.subscribe("g", func(o *broker.SubscriberOptions) { o.Prefetch = n })
	if err != nil {
		return err
	}
	var mu sync.Mutex
	held := map[string]bool{}
	stopCrashed := p.receive(crashed, func(d *broker.Delivery) {
		p.led.Delivered(d.Message().ID)
		mu.Lock()
		held[d.Message().ID] = true // never settled: this consumer "crashes"
		mu.Unlock()
		p.sig.poke()
	})
	if err := p.publishNew(p.messages(0, n, 0), n); err != nil {
		return err
	}
	err = p.wait(fmt.Sprintf("the first subscriber to receive all %d messages without settling them (Prefetch %d)", n, n), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(held) == n
	})
	stopCrashed()
	if err != nil {
		return err
	}
	if err := crashed.Close(p.ctx); err != nil {
		return fmt.Errorf("closing the subscriber that holds unsettled deliveries: %w", err)
	}
	crashAt := time.Now()
	var lastAt time.Time
	next, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	stop := p.receive(next, func(d *broker.Delivery) {
		m := d.Message()
		p.led.Delivered(m.ID)
		if p.caps.AttemptCount && m.Attempt < 2 {
			p.failf("%s came back after the crash with Attempt %d, want >= 2", m.ID, m.Attempt)
		}
		p.ack(d)
		mu.Lock()
		lastAt = time.Now()
		mu.Unlock()
		p.led.Handled(m.ID)
	})
	defer stop()
	if err := p.waitAll(p.led, "the unsettled messages to come back to a new subscriber of the group"); err != nil {
		return fmt.Errorf("deliveries left unsettled by a closed subscriber were not redelivered: %w", err)
	}
	mu.Lock()
	p.notef("all %d redelivered within %v of the crashed subscriber's Close (AckTimeout %v)", n, lastAt.Sub(crashAt).Round(time.Millisecond), p.h.AckTimeout)
	mu.Unlock()
	return nil
}

// failEvery: alo.no-loss fails the first attempt of every failEvery-th
// message (index % failEvery == 3).
const failEvery = 7

func aloNoLoss(p *probe) error {
	n := p.h.Messages
	subs := 1
	if p.caps.ConsumerGroups {
		subs = 2
	}
	var mu sync.Mutex
	calls := map[string]int{}
	injected := 0
	h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		p.led.Delivered(m.ID)
		mu.Lock()
		c := calls[m.ID]
		calls[m.ID]++
		if c == 0 && index(m.ID)%failEvery == 3 {
			injected++
			mu.Unlock()
			return errInjected
		}
		mu.Unlock()
		p.led.Handled(m.ID)
		return nil
	})
	var consumers []*consumer
	for i := 0; i < subs; i++ {
		sub, err := p.subscribe("g", nil)
		if err != nil {
			return err
		}
		consumers = append(consumers, p.consume(sub, broker.ConsumeOptions{Concurrency: 8}, h, nil))
	}
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	msgs := p.messages(0, n, 16)
	for _, m := range msgs {
		p.led.Published(m.ID, m.Key)
	}
	// Four producers publish batches of 25 concurrently through one
	// publisher.
	const producers, batch = 4, 25
	var pwg sync.WaitGroup
	for w := 0; w < producers; w++ {
		pwg.Add(1)
		p.goSafe(func() {
			defer pwg.Done()
			for i := w * batch; i < len(msgs); i += producers * batch {
				part := msgs[i:min(i+batch, len(msgs))]
				if err := pub.Publish(p.ctx, p.topic, part...); err != nil {
					p.abort(fmt.Errorf("publish: %w", err))
					return
				}
			}
		})
	}
	err = p.waitAll(p.led, "every message to be handled")
	pwg.Wait()
	for _, c := range consumers {
		if serr := c.stop(); serr != nil {
			p.failf("Consume: %v", serr)
		}
	}
	if err != nil {
		return err
	}
	r := p.led.Report()
	mu.Lock()
	p.notef("%d handled by %d subscriber(s); %d injected failures redelivered; %d duplicates (allowed)", r.Handled, subs, injected, r.Duplicates)
	mu.Unlock()
	return nil
}

// amoEvery: amo.no-redelivery's handler fails every amoEvery-th message.
const amoEvery = 5

// amoWindow is how long amo.no-redelivery keeps watching after every message
// was handled once: one and a half AckTimeouts, the time an adapter that
// failed to record an ack would take to redeliver.
func amoWindow(h Harness) time.Duration { return h.AckTimeout * 3 / 2 }

func amoNoRedelivery(p *probe) error {
	const n = 40
	sub, err := p.subscribeOrRefused("g", func(o *broker.SubscriberOptions) { o.Guarantee = semantics.AtMostOnce })
	if err != nil {
		return err
	}
	var mu sync.Mutex
	calls := map[string]int{}
	var twice []string
	failed := 0
	c := p.consume(sub, broker.ConsumeOptions{Concurrency: 4},
		func(_ context.Context, m *broker.Message) error {
			p.led.Delivered(m.ID)
			mu.Lock()
			calls[m.ID]++
			if calls[m.ID] == 2 {
				twice = append(twice, m.ID)
			}
			fail := calls[m.ID] == 1 && index(m.ID)%amoEvery == 2
			if fail {
				failed++
			}
			mu.Unlock()
			p.led.Handled(m.ID) // the handler ran: under at-most-once that is what counts
			if fail {
				return errInjected
			}
			return nil
		}, nil)
	defer c.stop()
	if err := p.publishNew(p.messages(0, n, 0), 10); err != nil {
		return err
	}
	if err := p.waitAll(p.led, "every message to be handled once (nothing crashed, so nothing may be lost)"); err != nil {
		return err
	}
	window := amoWindow(p.h)
	p.observe(window, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(twice) > 0
	})
	if err := c.stop(); err != nil {
		p.failf("Consume: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(twice) > 0 {
		sort.Strings(twice)
		return fmt.Errorf("at-most-once handled %d of %d messages more than once (watched %v after all were handled): ids %s",
			len(twice), n, window, Sample(twice, 5))
	}
	p.notef("no message handled twice within %v (1.5 x AckTimeout) after all %d were handled; %d handler failures were not retried", window, n, failed)
	return nil
}

// nackDelayValue is the delay nack.delay asks for: a whole second, because
// SQS and Pub/Sub take seconds.
const nackDelayValue = time.Second

// nackDelayTolerance forgives clocks that keep milliseconds (a broker in
// another process); an honest adapter is never earlier than the delay.
const nackDelayTolerance = 5 * time.Millisecond

func nackDelay(p *probe) error {
	const n = 3
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	nackedAt := map[string]time.Time{}
	var waited []time.Duration
	stop := p.receive(sub, func(d *broker.Delivery) {
		m := d.Message()
		p.led.Delivered(m.ID)
		mu.Lock()
		at, nacked := nackedAt[m.ID]
		if !nacked {
			nackedAt[m.ID] = time.Now() // before Nack: the delay runs from no earlier than this
			mu.Unlock()
			p.nack(d, nackDelayValue)
			return
		}
		w := time.Since(at)
		waited = append(waited, w)
		mu.Unlock()
		if w < nackDelayValue-nackDelayTolerance {
			p.failf("%s came back %v after Nack(%v): too early", m.ID, w.Round(time.Millisecond), nackDelayValue)
		}
		p.ack(d)
		p.led.Handled(m.ID)
	})
	defer stop()
	if err := p.publishNew(p.messages(0, n, 0), n); err != nil {
		return err
	}
	if err := p.waitAll(p.led, fmt.Sprintf("the messages nacked with delay %v to come back", nackDelayValue)); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(waited)
	p.notef("redelivered %v to %v after Nack(%v)", waited[0].Round(time.Millisecond), waited[len(waited)-1].Round(time.Millisecond), nackDelayValue)
	return nil
}

// dlqMaxAttempts is the MaxAttempts dlq.after-max-attempts subscribes with.
const dlqMaxAttempts = 3

func dlqAfterMaxAttempts(p *probe) error {
	const n = 3
	dlqTopic := broker.DeadLetterTopic(p.topic)
	// The dead-letter subscriber exists first: on some brokers a topic
	// drops what is published before anyone subscribes.
	dead, err := p.subscribe("dlq", func(o *broker.SubscriberOptions) { o.Topic = dlqTopic })
	if err != nil {
		return err
	}
	main, err := p.subscribe("g", func(o *broker.SubscriberOptions) {
		o.MaxAttempts = dlqMaxAttempts
		o.DeadLetterTopic = dlqTopic
	})
	if err != nil {
		return err
	}
	msgs := p.messages(0, n, 0)
	want := map[string]*broker.Message{}
	for _, m := range msgs {
		want[m.ID] = m
	}
	var mu sync.Mutex
	attempts := map[string][]int{} // main subscription: Attempt of each delivery
	atDeath := map[string][]int{}  // attempts[id] when id first reached the DLQ
	dlqCopies := 0
	stopMain := p.receive(main, func(d *broker.Delivery) {
		m := d.Message()
		p.led.Delivered(m.ID)
		mu.Lock()
		attempts[m.ID] = append(attempts[m.ID], m.Attempt)
		mu.Unlock()
		p.nack(d, 0)
	})
	defer stopMain()
	stopDead := p.receive(dead, func(d *broker.Delivery) {
		m := d.Message()
		w, ok := want[m.ID]
		switch {
		case !ok:
			p.failf("the dead-letter topic received %q, which is not the ID of a published message (IDs must be preserved)", m.ID)
		case !bytesEqual(m.Payload, w.Payload):
			p.failf("dead letter %s: Payload %s", m.ID, payloadDiff(w.Payload, m.Payload))
		}
		if ot := m.Header(broker.HeaderOriginalTopic); ot != "" && ot != p.topic {
			p.failf("dead letter %s: header %s = %q, want %q", m.ID, broker.HeaderOriginalTopic, ot, p.topic)
		}
		mu.Lock()
		dlqCopies++
		if _, seen := atDeath[m.ID]; !seen && ok {
			atDeath[m.ID] = slices.Clone(attempts[m.ID])
		}
		mu.Unlock()
		p.ack(d)
		p.led.Handled(m.ID)
	})
	defer stopDead()
	if err := p.publishNew(msgs, n); err != nil {
		return err
	}
	if err := p.waitAll(p.led, fmt.Sprintf("every message to reach %s after %d attempts", dlqTopic, dlqMaxAttempts)); err != nil {
		return fmt.Errorf("messages nacked on every delivery did not reach the dead-letter topic: %w", err)
	}
	wantAttempts := make([]int, dlqMaxAttempts)
	for i := range wantAttempts {
		wantAttempts[i] = i + 1
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range msgs {
		got := atDeath[m.ID]
		switch {
		case p.caps.AttemptCount && len(got) != dlqMaxAttempts:
			p.failf("%s was delivered %d times on the main subscription before it was dead-lettered, want MaxAttempts = %d (attempts %v)", m.ID, len(got), dlqMaxAttempts, got)
		case p.caps.AttemptCount && !slices.Equal(got, wantAttempts):
			p.failf("%s was delivered with Attempt %v before it was dead-lettered, want %v", m.ID, got, wantAttempts)
		}
	}
	p.notef("%d dead-letter copies of %d messages (copies beyond one are counted as duplicates, not failed)", dlqCopies, n)
	return nil
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }
