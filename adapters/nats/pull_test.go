package nats

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// An at-least-once subscriber asks for more every time fewer than half of
// its prefetch are left, however fast it hands messages out. (jetstream's
// Consume skipped that check for a message handled while its previous pull
// request was still being sent; when that was the last message in flight,
// nothing asked for more until two heartbeats were missed — 15s with the
// default ack wait.) A prefetch of 3 makes a pull request every other
// message; a receive that waits 5s means a refill was not sent.
func TestPullRefillsWithoutPause(t *testing.T) {
	prefix := uniq("qkpull")
	b, _ := openBroker(t, prefix, "")
	ctx := testCtx(t)
	topic := prefix
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	const n = 3000
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Payload: []byte("x")}
	}
	publish(t, b, topic, msgs...)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 3})
	seen := make(map[string]bool, n)
	for len(seen) < n {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d, err := s.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", len(seen), n, err)
		}
		seen[d.Message().ID] = true
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
