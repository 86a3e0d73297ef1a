// Package dedupetest checks that a broker.IdempotencyStore keeps its
// contract, the way testing/fstest checks a file system: call Run from a test
// of your store. The stores of package dedupe and its subpackages are tested
// with it.
package dedupetest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Run checks store against the contract of broker.IdempotencyStore, and that
// the dedupe step built on it handles the two cases the naive "SETNX then
// handle" gets wrong. newKey must return a key no other test uses (use a
// unique prefix per run). Lease expiry is waited for in real time, with
// leases of a few hundred milliseconds.
func Run(t *testing.T, store broker.IdempotencyStore, newKey func() string) {
	t.Run("claim-complete-done", func(t *testing.T) {
		ctx, k := context.Background(), newKey()
		expect(t, store, k, time.Minute, broker.Claimed)
		expect(t, store, k, time.Minute, broker.InFlight)
		must(t, store.Complete(ctx, k))
		expect(t, store, k, time.Minute, broker.AlreadyDone)
		must(t, store.Release(ctx, k)) // releasing a done key keeps it done
		expect(t, store, k, time.Minute, broker.AlreadyDone)
	})
	t.Run("release-allows-reclaim", func(t *testing.T) {
		k := newKey()
		expect(t, store, k, time.Minute, broker.Claimed)
		must(t, store.Release(context.Background(), k))
		expect(t, store, k, time.Minute, broker.Claimed)
	})
	t.Run("lease-expires", func(t *testing.T) {
		k := newKey()
		expect(t, store, k, 100*time.Millisecond, broker.Claimed)
		expect(t, store, k, time.Minute, broker.InFlight)
		eventually(t, 5*time.Second, func() bool {
			res, err := store.Claim(context.Background(), k, time.Minute)
			must(t, err)
			return res == broker.Claimed
		}, "the claim of %s never expired", k)
	})
	t.Run("keys-are-independent", func(t *testing.T) {
		a, b := newKey(), newKey()
		expect(t, store, a, time.Minute, broker.Claimed)
		must(t, store.Complete(context.Background(), a))
		expect(t, store, b, time.Minute, broker.Claimed)
	})
	t.Run("one-claim-wins", func(t *testing.T) {
		k := newKey()
		var wg sync.WaitGroup
		var claimed atomic.Int32
		for range 16 {
			wg.Go(func() {
				res, err := store.Claim(context.Background(), k, time.Minute)
				if err != nil {
					t.Error(err)
				}
				if res == broker.Claimed {
					claimed.Add(1)
				}
			})
		}
		wg.Wait()
		if n := claimed.Load(); n != 1 {
			t.Fatalf("%d of 16 concurrent claims won, want exactly 1", n)
		}
	})
	t.Run("crash-after-claim", func(t *testing.T) { CrashAfterClaim(t, store, newKey()) })
	t.Run("duplicate-in-flight", func(t *testing.T) { DuplicateInFlight(t, store, newKey()) })
}

// CrashAfterClaim shows the first case the naive SETNX gets wrong: a handler
// claims the message and dies (its goroutine exits without returning, so
// nothing completes or releases the claim). The redelivery is deferred while
// the lease holds, then handled: not lost.
func CrashAfterClaim(t *testing.T, store broker.IdempotencyStore, id string) {
	var runs atomic.Int32
	crashed := make(chan struct{})
	h := broker.Idempotent(store, broker.IdempotencyOptions{Lease: 300 * time.Millisecond})(broker.HandlerFunc(
		func(ctx context.Context, m *broker.Message) error {
			if runs.Add(1) == 1 {
				close(crashed)
				runtime.Goexit() // the process dies mid-handler
			}
			return nil
		}))
	go func() { _ = h.Handle(context.Background(), &broker.Message{ID: id}) }()
	<-crashed

	err := h.Handle(context.Background(), &broker.Message{ID: id, Attempt: 2})
	if !errors.Is(err, broker.ErrInFlight) {
		t.Fatalf("redelivery under a live lease: %v, want ErrInFlight (a naive SETNX store says done here and loses the message)", err)
	}
	eventually(t, 5*time.Second, func() bool {
		return h.Handle(context.Background(), &broker.Message{ID: id, Attempt: 3}) == nil
	}, "the redelivery was never handled after the lease expired")
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (the crashed run and the redelivery)", n)
	}
	if err := h.Handle(context.Background(), &broker.Message{ID: id, Attempt: 4}); err != nil || runs.Load() != 2 {
		t.Fatalf("after completion: err %v, runs %d; want a skipped duplicate", err, runs.Load())
	}
}

// DuplicateInFlight shows the second case: a copy delivered while the first
// is still being handled is not handled again. It is deferred, and when it
// comes back it finds the key done.
func DuplicateInFlight(t *testing.T, store broker.IdempotencyStore, id string) {
	var runs, dups atomic.Int32
	started, finish := make(chan struct{}), make(chan struct{})
	h := broker.Idempotent(store, broker.IdempotencyOptions{Lease: time.Minute, OnDuplicate: func(*broker.Message) { dups.Add(1) }})(
		broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if runs.Add(1) == 1 {
				close(started)
				<-finish
			}
			return nil
		}))
	first := make(chan error, 1)
	go func() { first <- h.Handle(context.Background(), &broker.Message{ID: id}) }()
	<-started
	err := h.Handle(context.Background(), &broker.Message{ID: id})
	if d, ok := broker.RetryDelay(err); !errors.Is(err, broker.ErrInFlight) || !ok || d <= 0 {
		t.Fatalf("copy during the first: %v, want ErrInFlight with a redelivery delay", err)
	}
	close(finish)
	if err := <-first; err != nil {
		t.Fatalf("first copy: %v", err)
	}
	if err := h.Handle(context.Background(), &broker.Message{ID: id}); err != nil {
		t.Fatalf("redelivered copy: %v, want nil (acked as a duplicate)", err)
	}
	if runs.Load() != 1 || dups.Load() != 1 {
		t.Fatalf("handler ran %d times with %d duplicates, want 1 and 1", runs.Load(), dups.Load())
	}
}

func expect(t *testing.T, s broker.IdempotencyStore, key string, lease time.Duration, want broker.ClaimResult) {
	t.Helper()
	got, err := s.Claim(context.Background(), key, lease)
	must(t, err)
	if got != want {
		t.Fatalf("Claim(%s) = %s, want %s", key, name(got), name(want))
	}
}

func name(r broker.ClaimResult) string {
	switch r {
	case broker.Claimed:
		return "Claimed"
	case broker.AlreadyDone:
		return "AlreadyDone"
	case broker.InFlight:
		return "InFlight"
	}
	return fmt.Sprintf("ClaimResult(%d)", int(r))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond every 20ms until it holds or within passes.
func eventually(t *testing.T, within time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StaleRelease checks a store shared by several processes: a and b are two
// instances over the same backend (two processes). a's claim expires, b
// takes the key over, then a — late — releases: b's claim must survive.
func StaleRelease(t *testing.T, a, b broker.IdempotencyStore, key string) {
	ctx := context.Background()
	expect(t, a, key, 50*time.Millisecond, broker.Claimed)
	eventually(t, 5*time.Second, func() bool {
		res, err := b.Claim(ctx, key, time.Minute)
		must(t, err)
		return res == broker.Claimed
	}, "b never took over a's expired claim of %s", key)
	must(t, a.Release(ctx, key))
	expect(t, b, key, time.Minute, broker.InFlight)
}
