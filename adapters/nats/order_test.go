package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// TestPerKeyOrderCompetingSubscribers measures per-key order where
// JetStream alone would break it: two subscribers on two connections
// compete in one PerKey group, each running Consume with 4 handlers, every
// 7th first delivery fails (Consume retries it in place) and every 40th
// handler's first attempt outlives the ack wait, so the server redelivers
// it (to either subscriber) while its late Ack is lost. Every message must
// be handled, and first handled after the earlier messages of its key.
func TestPerKeyOrderCompetingSubscribers(t *testing.T) {
	const n, keys = 300, 8
	prefix := uniq("qkorder")
	b1, _ := openBroker(t, prefix, "")
	b2, _ := openBroker(t, prefix, "")
	topic := prefix
	ctx := testCtx(t)
	if err := b1.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	const ackTimeout = 300 * time.Millisecond
	var msgs []*broker.Message
	for i := range n {
		msgs = append(msgs, &broker.Message{ID: fmt.Sprintf("m%04d", i), Key: "k" + strconv.Itoa(i%keys)})
	}
	var mu sync.Mutex
	firstAt := map[string]int{} // ID -> position among first handlings
	var order []string
	lastSeq := map[string]int{}
	reordered := 0
	succeeded := map[string]bool{}
	done := make(chan struct{})
	h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		i, _ := strconv.Atoi(m.ID[1:])
		mu.Lock()
		if _, seen := firstAt[m.ID]; !seen {
			firstAt[m.ID] = len(order)
			order = append(order, m.ID)
			if last, ok := lastSeq[m.Key]; ok && i < last {
				reordered++
			}
			lastSeq[m.Key] = max(lastSeq[m.Key], i)
		}
		mu.Unlock()
		switch {
		case m.Attempt == 1 && i%7 == 3:
			return errors.New("injected failure")
		case m.Attempt == 1 && i%40 == 5:
			time.Sleep(ackTimeout + 100*time.Millisecond) // outlives the ack wait
		}
		mu.Lock()
		succeeded[m.ID] = true
		if len(succeeded) == n {
			select {
			case <-done:
			default:
				close(done)
			}
		}
		mu.Unlock()
		return nil
	})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, b := range []*broker.Broker{b1, b2} {
		s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Ordering: semantics.PerKey, AckTimeout: ackTimeout})
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = broker.Consume(cctx, s, h, broker.ConsumeOptions{Concurrency: 4, OnError: func(*broker.Message, error) {}})
		}()
	}
	publish(t, b1, topic, msgs...)
	select {
	case <-done:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(order) != n {
		t.Fatalf("handled %d of %d distinct messages", len(order), n)
	}
	if reordered != 0 {
		t.Errorf("%d of %d messages first handled before an earlier message of their key", reordered, n)
	}
	t.Logf("%d messages over %d keys, 2 competing subscribers x 4 handlers, %d injected failures and %d ack timeouts: %d reordered",
		n, keys, (n+3)/7, (n+35)/40, reordered)
}
