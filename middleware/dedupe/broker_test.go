package dedupe_test

import (
	"context"
	"sync"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
)

// naive is the "SETNX evt:<id>, then handle" of our source material: the
// first claim marks the key for good and nothing is ever undone.
type naive struct {
	mu   sync.Mutex
	keys map[string]bool
}

func (n *naive) Claim(_ context.Context, key string, _ time.Duration) (broker.ClaimResult, string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.keys[key] {
		return broker.AlreadyDone, "", nil
	}
	n.keys[key] = true
	return broker.Claimed, "naive", nil
}
func (n *naive) Complete(context.Context, string, string) error { return nil }
func (n *naive) Release(context.Context, string, string) error  { return nil }

func TestCrashAfterClaim(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		got := mwtest.CrashAfterClaim(t, e, dedupe.NewMemoryStore(dedupe.MemoryOptions{}), 400*time.Millisecond)
		if got.Handled != 1 || got.Deferred == 0 {
			t.Fatalf("memory store: %+v; want the redelivery deferred under the lease, then handled once", got)
		}
		if got := mwtest.CrashAfterClaim(t, e, &naive{keys: map[string]bool{}}, 400*time.Millisecond); got.Handled != 0 {
			t.Fatalf("naive SETNX: %+v; expected it to lose the message (this test shows what dedupe fixes)", got)
		}
	})
}

func TestDuplicateWhileInFlight(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		for _, firstFails := range []bool{false, true} {
			got := mwtest.DuplicateInFlight(t, e, dedupe.NewMemoryStore(dedupe.MemoryOptions{}), firstFails)
			if got.Handled != 1 || got.Deferred == 0 {
				t.Fatalf("memory store, first copy fails %v: %+v; want the copy deferred and the message handled once", firstFails, got)
			}
		}
		if got := mwtest.DuplicateInFlight(t, e, &naive{keys: map[string]bool{}}, true); got.Handled != 0 {
			t.Fatalf("naive SETNX: %+v; expected it to lose the message when the first copy fails", got)
		}
	})
}
