package conformance

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func isClosed(err error) bool {
	return errors.Is(err, broker.ErrClosed) || broker.KindOf(err) == semantics.Closed
}

func closePublisherFlush(p *probe) error {
	const workers, each, closeAfter = 5, 10, 20
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	var mu sync.Mutex
	ok := map[string]bool{} // Publish returned nil
	received := map[string]int{}
	refused := 0
	stop := p.receive(sub, func(d *broker.Delivery) {
		mu.Lock()
		received[d.Message().ID]++
		mu.Unlock()
		p.ack(d)
		p.sig.poke()
	})
	defer stop()

	var returned atomic.Int32
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		p.goSafe(func() {
			defer wg.Done()
			for _, m := range p.messages(w*each, each, 0) {
				err := pub.Publish(p.ctx, p.topic, m)
				mu.Lock()
				switch {
				case err == nil:
					ok[m.ID] = true
				case isClosed(err):
					refused++
				default:
					p.failf("Publish racing Close returned %v, want nil or ErrClosed", err)
				}
				mu.Unlock()
				returned.Add(1)
				p.sig.poke()
			}
		})
	}
	if err := p.wait(fmt.Sprintf("%d publishes to return", closeAfter), func() bool { return returned.Load() >= closeAfter }); err != nil {
		return err
	}
	if err := pub.Close(p.ctx); err != nil {
		p.failf("publisher Close: %v", err)
	}
	wg.Wait()
	err = pub.Publish(p.ctx, p.topic, &broker.Message{ID: p.id(9999), Payload: []byte("after Close")})
	switch {
	case err == nil:
		p.failf("Publish after Close returned nil, want ErrClosed")
	case !isClosed(err):
		p.failf("Publish after Close returned %v, want ErrClosed (kind closed)", err)
	}

	mu.Lock()
	published := len(ok)
	mu.Unlock()
	werr := p.wait("every message whose Publish returned nil to be delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id := range ok {
			if received[id] == 0 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	c := &counts{published: published}
	var lost []string
	for id := range ok {
		switch n := received[id]; {
		case n == 0:
			lost = append(lost, id)
		default:
			c.handled++
			c.duplicates += n - 1
		}
	}
	c.lost = len(lost)
	p.counts = c
	if werr != nil {
		sort.Strings(lost)
		return fmt.Errorf("lost %d of %d messages whose Publish returned nil around Close: ids %s (%v)", len(lost), published, Sample(lost, 5), werr)
	}
	p.notef("%d publishes returned nil and were delivered, %d returned ErrClosed after Close", published, refused)
	return nil
}

func closeGracefulConsume(p *probe) error {
	const n, conc = 30, 4
	first, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	gate := make(chan struct{})
	var started, finished atomic.Int32
	var startedAtReturn, finishedAtReturn int32
	c := p.consume(first, broker.ConsumeOptions{Concurrency: conc}, func(ctx context.Context, m *broker.Message) error {
		p.led.Delivered(m.ID)
		started.Add(1)
		p.sig.poke()
		select {
		case <-gate:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			p.failf("handler of %s: its context was cancelled during a graceful shutdown: %v", m.ID, ctx.Err())
		}
		p.led.Handled(m.ID)
		finished.Add(1)
		return nil
	}, func() {
		startedAtReturn, finishedAtReturn = started.Load(), finished.Load()
	})
	if err := p.publishNew(p.messages(0, n, 0), 10); err != nil {
		return err
	}
	if err := p.wait(fmt.Sprintf("%d handlers to be running", conc), func() bool { return started.Load() >= conc }); err != nil {
		close(gate)
		return err
	}
	c.cancel() // shutdown begins while conc handlers are blocked
	close(gate)
	if err := c.wait(); err != nil {
		p.failf("Consume: %v", err)
	}
	if finishedAtReturn != startedAtReturn {
		p.failf("Consume returned while %d of %d handlers were still running", startedAtReturn-finishedAtReturn, startedAtReturn)
	}
	if err := first.Close(p.ctx); err != nil {
		p.failf("closing the subscriber after Consume returned: %v", err)
	}
	inFlight := p.led.handledCount()

	next, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	c2 := p.consume(next, broker.ConsumeOptions{Concurrency: conc}, func(_ context.Context, m *broker.Message) error {
		p.led.Delivered(m.ID)
		p.led.Handled(m.ID)
		return nil
	}, nil)
	defer c2.stop()
	if err := p.waitAll(p.led, "a new subscriber to get every message the first Consume did not handle"); err != nil {
		return fmt.Errorf("messages not handled before the graceful shutdown were lost (acked without being handled?): %w", err)
	}
	p.notef("%d handlers in flight at shutdown finished; the other %d messages went to the next subscriber", inFlight, n-inFlight)
	return nil
}
