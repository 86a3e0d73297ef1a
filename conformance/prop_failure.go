package conformance

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// nackEvery: order.per-key-after-nack fails the first delivery of every
// nackEvery-th message, alternately with no delay and with nackAfterDelay.
const (
	nackEvery      = 10
	nackAfterDelay = 50 * time.Millisecond
)

// order.per-key-after-nack: concurrent handlers under per-key order, a share
// of first deliveries failed (with and without a nack delay): every key's
// messages are still handled in publish order, none lost.
func orderPerKeyAfterNack(p *probe) error {
	var mu sync.Mutex
	failed := map[string]bool{}
	r, err := p.runOrdered(func(_ context.Context, m *broker.Message) error {
		p.led.Delivered(m.ID)
		i := index(m.ID)
		mu.Lock()
		fail := i%nackEvery == nackEvery-1 && !failed[m.ID]
		if fail {
			failed[m.ID] = true
		}
		mu.Unlock()
		switch {
		case fail && i%(2*nackEvery) == nackEvery-1:
			return errInjected
		case fail:
			return broker.RetryAfter(errInjected, nackAfterDelay)
		}
		p.led.Handled(m.ID)
		return nil
	})
	if err != nil {
		return err
	}
	mu.Lock()
	nacks := len(failed)
	mu.Unlock()
	if len(r.Reordered) > 0 {
		return fmt.Errorf("%d of %d messages were handled after a later message of their key, with %d first deliveries failed: ids %s",
			len(r.Reordered), p.h.Messages, nacks, Sample(r.Reordered, 5))
	}
	p.notef("%d messages over %d keys handled in publish order with %d first deliveries failed (half with a %v delay); %d duplicates",
		p.h.Messages, orderKeys, nacks, nackAfterDelay, r.Duplicates)
	return nil
}
