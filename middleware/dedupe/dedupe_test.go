package dedupe_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe"
)

func TestMiddlewareCountsAndKeys(t *testing.T) {
	var stats dedupe.Stats
	var runs atomic.Int32
	h := dedupe.New(dedupe.NewMemoryStore(dedupe.MemoryOptions{}), dedupe.Options{
		Stats: &stats,
		Key:   func(m *broker.Message) string { return m.Header("order") },
	})(broker.HandlerFunc(func(context.Context, *broker.Message) error { runs.Add(1); return nil }))
	ctx := context.Background()
	for _, m := range []*broker.Message{
		{ID: "1", Headers: map[string]string{"order": "A"}},
		{ID: "2", Headers: map[string]string{"order": "A"}}, // same key, other ID: a duplicate
		{ID: "3", Headers: map[string]string{"order": "B"}},
		{ID: "4"}, {ID: "4"}, // empty key: not deduplicated
	} {
		if err := h.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if got := stats.Snapshot(); runs.Load() != 4 || got != (dedupe.StatsSnapshot{Handled: 4, Duplicates: 1}) {
		t.Fatalf("runs %d, stats %+v; want 4 runs and handled, 1 duplicate", runs.Load(), got)
	}
}

func TestFailureReleasesTheClaim(t *testing.T) {
	var runs atomic.Int32
	boom := errors.New("boom")
	h := dedupe.New(dedupe.NewMemoryStore(dedupe.MemoryOptions{}), dedupe.Options{Lease: time.Hour})(broker.HandlerFunc(
		func(context.Context, *broker.Message) error {
			if runs.Add(1) == 1 {
				return boom
			}
			return nil
		}))
	m := &broker.Message{ID: "x"}
	if err := h.Handle(context.Background(), m); !errors.Is(err, boom) {
		t.Fatalf("first: %v", err)
	}
	if err := h.Handle(context.Background(), m); err != nil || runs.Load() != 2 {
		t.Fatalf("redelivery after a failure: %v, runs %d; want handled at once (claim released, not held for the lease)", err, runs.Load())
	}
}

func TestInFlightIsCounted(t *testing.T) {
	var stats dedupe.Stats
	store := dedupe.NewMemoryStore(dedupe.MemoryOptions{})
	_, _, _ = store.Claim(context.Background(), "busy", time.Minute)
	h := dedupe.New(store, dedupe.Options{Stats: &stats})(broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	if err := h.Handle(context.Background(), &broker.Message{ID: "busy"}); !errors.Is(err, broker.ErrInFlight) {
		t.Fatalf("Handle = %v", err)
	}
	if stats.Snapshot().InFlight != 1 {
		t.Fatalf("stats %+v, want InFlight 1", stats.Snapshot())
	}
}

// stage is a stand-in for another queuekit middleware in a chain.
type stage struct {
	name string
	next broker.Handler
}

func (s stage) Handle(ctx context.Context, m *broker.Message) error { return s.next.Handle(ctx, m) }
func (s stage) Stage() string                                       { return s.name }
func (s stage) Unwrap() broker.Handler                              { return s.next }

func TestRefusesToWrapDLQ(t *testing.T) {
	noop := broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	mw := dedupe.New(dedupe.NewMemoryStore(dedupe.MemoryOptions{}), dedupe.Options{})
	mw(stage{"retry", noop}) // fine
	defer func() {
		if recover() == nil {
			t.Fatal("dedupe wrapped a chain holding dlq without complaint")
		}
	}()
	mw(stage{"retry", stage{"dlq", noop}})
}
