package dedupe_test

import (
	"context"
	"fmt"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/semantics"
)

func ExampleNew() {
	var stats dedupe.Stats
	charged := 0
	h := dedupe.New(dedupe.NewMemoryStore(dedupe.MemoryOptions{}), dedupe.Options{Stats: &stats})(broker.HandlerFunc(
		func(ctx context.Context, m *broker.Message) error {
			charged++ // not idempotent on its own
			return nil
		}))
	for range 3 { // the broker delivers the same message three times
		_ = h.Handle(context.Background(), &broker.Message{ID: "payment-42"})
	}
	fmt.Printf("charged %d time(s), %d duplicate(s) suppressed\n", charged, stats.Snapshot().Duplicates)
	// Output:
	// charged 1 time(s), 2 duplicate(s) suppressed
}

// A store serves broker.Consume's effectively-once guarantee too.
func ExampleNewMemoryStore() {
	store := dedupe.NewMemoryStore(dedupe.MemoryOptions{MaxKeys: 1 << 20})
	_ = broker.SubscriberOptions{Topic: "orders", Guarantee: semantics.EffectivelyOnce} // declared once
	_ = broker.ConsumeOptions{Idempotency: store}
	fmt.Println(store.Len())
	// Output:
	// 0
}
