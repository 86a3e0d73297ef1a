package outbox_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/outbox"
)

// A message's DeliverAt holds it in the outbox as AddAt does; with both,
// the later time wins. The relay publishes a held message without
// DeliverAt, once it is due, so any broker delivers it at once.
func TestDeliverAtHoldsLikeAddAt(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		e := openBroker(t, "memory")
		db, ob := newOutbox(t, d, outbox.Options{})
		topic := unique("qktest_deliverat")
		got := consume(t, e, topic)
		var mu sync.Mutex
		firstPublished := map[string]time.Time{}
		pub := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
			now := time.Now()
			mu.Lock()
			for _, m := range msgs {
				if _, ok := firstPublished[m.ID]; !ok {
					firstPublished[m.ID] = now
				}
				if !m.DeliverAt.IsZero() {
					t.Errorf("the relay published %s with DeliverAt %v; want none (it is due)", m.ID, m.DeliverAt)
				}
			}
			mu.Unlock()
			return e.pub.Publish(ctx, topic, msgs...)
		})
		ctx := context.Background()
		start := time.Now()
		due := map[string]time.Time{
			"deliver-at":      start.Add(time.Second),
			"at-wins":         start.Add(1300 * time.Millisecond),
			"deliver-at-wins": start.Add(1600 * time.Millisecond),
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		own := &broker.Message{Key: "k", ID: "deliver-at-wins", DeliverAt: due["deliver-at-wins"]}
		steps := []func() error{
			func() error {
				return ob.Add(ctx, tx, topic, &broker.Message{Key: "k", ID: "deliver-at", DeliverAt: due["deliver-at"]})
			},
			func() error {
				return ob.AddAt(ctx, tx, due["at-wins"], topic, &broker.Message{Key: "k", ID: "at-wins", DeliverAt: start.Add(500 * time.Millisecond)})
			},
			func() error { return ob.AddAt(ctx, tx, start.Add(200*time.Millisecond), topic, own) },
			func() error { return ob.Add(ctx, tx, topic, &broker.Message{Key: "k", ID: "now"}) },
			func() error {
				return ob.Add(ctx, tx, topic, &broker.Message{Key: "k", ID: "past", DeliverAt: start.Add(-time.Hour)})
			},
		}
		for _, step := range steps {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if !own.DeliverAt.Equal(due["deliver-at-wins"]) {
			t.Errorf("AddAt changed the caller's DeliverAt to %v", own.DeliverAt)
		}
		if s, err := ob.Stats(ctx); err != nil || s.Depth != 5 || s.Held != 3 {
			t.Fatalf("stats before the relay runs: %+v (%v), want depth 5, 3 held", s, err)
		}
		runRelay(t, newRelay(t, ob, pub, outbox.RelayOptions{}))
		got.waitFor(t, 30*time.Second, "every message", func(ms []*broker.Message) bool { return len(ms) >= 5 })
		msgs, at := got.snapshot()
		var order []string
		for i, m := range msgs {
			order = append(order, m.ID)
			mu.Lock()
			pubAt := firstPublished[m.ID]
			mu.Unlock()
			if d, ok := due[m.ID]; ok && (pubAt.Before(d) || at[i].Before(d)) {
				t.Errorf("%s published %v and received %v before its time", m.ID, d.Sub(pubAt), d.Sub(at[i]))
			}
		}
		if want := "now past deliver-at at-wins deliver-at-wins"; strings.Join(order, " ") != want {
			t.Errorf("arrival order %v, want %s: due messages first, held ones at their time", order, want)
		}
	})
}
