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
	ctx := context.Background()
	t.Run("claim-complete-done", func(t *testing.T) {
		k := newKey()
		tok := expect(t, store, k, time.Minute, broker.Claimed)
		expect(t, store, k, time.Minute, broker.InFlight)
		must(t, store.Complete(ctx, k, tok))
		expect(t, store, k, time.Minute, broker.AlreadyDone)
		must(t, store.Release(ctx, k, tok)) // releasing a done key keeps it done
		expect(t, store, k, time.Minute, broker.AlreadyDone)
	})
	t.Run("release-allows-reclaim", func(t *testing.T) {
		k := newKey()
		tok := expect(t, store, k, time.Minute, broker.Claimed)
		must(t, store.Release(ctx, k, tok))
		expect(t, store, k, time.Minute, broker.Claimed)
	})
	t.Run("release-needs-the-token", func(t *testing.T) {
		k, other := newKey(), newKey()
		expect(t, store, k, time.Minute, broker.Claimed)
		otherTok := expect(t, store, other, time.Minute, broker.Claimed)
		must(t, store.Release(ctx, k, ""))
		must(t, store.Release(ctx, k, otherTok))
		expect(t, store, k, time.Minute, broker.InFlight)
	})
	t.Run("tokens-are-distinct", func(t *testing.T) {
		seen := map[string]bool{}
		for range 20 {
			tok := expect(t, store, newKey(), time.Minute, broker.Claimed)
			if seen[tok] {
				t.Fatalf("token %q returned for two claims", tok)
			}
			seen[tok] = true
		}
	})
	t.Run("stale-release-keeps-takeover", func(t *testing.T) { StaleRelease(t, store, store, newKey()) })
	t.Run("lease-expires", func(t *testing.T) {
		k := newKey()
		expect(t, store, k, 100*time.Millisecond, broker.Claimed)
		expect(t, store, k, time.Minute, broker.InFlight)
		eventually(t, 5*time.Second, func() bool {
			res, _, err := store.Claim(ctx, k, time.Minute)
			must(t, err)
			return res == broker.Claimed
		}, "the claim of %s never expired", k)
	})
	t.Run("keys-are-independent", func(t *testing.T) {
		a, b := newKey(), newKey()
		tok := expect(t, store, a, time.Minute, broker.Claimed)
		must(t, store.Complete(ctx, a, tok))
		expect(t, store, b, time.Minute, broker.Claimed)
	})
	t.Run("one-claim-wins", func(t *testing.T) {
		k := newKey()
		var wg sync.WaitGroup
		var claimed atomic.Int32
		for range 16 {
			wg.Go(func() {
				res, tok, err := store.Claim(ctx, k, time.Minute)
				if err != nil {
					t.Error(err)
				}
				if res == broker.Claimed {
					claimed.Add(1)
				}
				if (res == broker.Claimed) != (tok != "") {
					t.Errorf("Claim = %s with token %q: a token comes with Claimed only", name(res), tok)
				}
			})
		}
		wg.Wait()
		if n := claimed.Load(); n != 1 {
			t.Fatalf("%d of 16 concurrent claims won, want exactly 1", n)
		}
	})
	t.Run("stale-failure-keeps-takeover", func(t *testing.T) { TakeoverAfterExpiry(t, store, newKey(), true) })
	t.Run("stale-success-ends-takeover", func(t *testing.T) { TakeoverAfterExpiry(t, store, newKey(), false) })
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

// TakeoverAfterExpiry checks one Store shared by the handlers of one
// process: a first copy's lease expires while its handler still runs, a
// second copy takes the key over, then the first handler returns — with an
// error when firstFails. Its late Release must not drop the second copy's
// claim, so a third copy that arrives while the second still runs is
// deferred, not run. When the first handler succeeds instead, the key is done:
// the third copy is skipped, and so is a fourth after the second copy fails.
// The handler runs twice in all, never three times.
func TakeoverAfterExpiry(t *testing.T, store broker.IdempotencyStore, id string, firstFails bool) {
	var runs atomic.Int32
	firstStarted, firstReturn := make(chan struct{}), make(chan struct{})
	secondStarted, secondReturn := make(chan struct{}), make(chan struct{})
	errFirst, errSecond := errors.New("first copy failed"), errors.New("second copy failed")
	inner := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		switch runs.Add(1) {
		case 1:
			close(firstStarted)
			<-firstReturn
			if firstFails {
				return errFirst
			}
		case 2:
			close(secondStarted)
			<-secondReturn
			if !firstFails {
				return errSecond
			}
		}
		return nil
	})
	short := broker.Idempotent(store, broker.IdempotencyOptions{Lease: 100 * time.Millisecond})(inner)
	long := broker.Idempotent(store, broker.IdempotencyOptions{Lease: time.Minute})(inner)
	ctx := context.Background()

	first := make(chan error, 1)
	go func() { first <- short.Handle(ctx, &broker.Message{ID: id, Attempt: 1}) }()
	<-firstStarted
	second := make(chan error, 1)
	go func() { // redelivered until the first copy's lease has expired
		for {
			err := long.Handle(ctx, &broker.Message{ID: id, Attempt: 2})
			if !errors.Is(err, broker.ErrInFlight) {
				second <- err
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	select {
	case <-secondStarted:
	case err := <-second:
		t.Fatalf("second copy returned %v without running the handler", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the second copy never took over the expired claim")
	}
	close(firstReturn)
	if err := <-first; firstFails != errors.Is(err, errFirst) || !firstFails && err != nil {
		t.Fatalf("first copy: %v", err)
	}

	err := long.Handle(ctx, &broker.Message{ID: id, Attempt: 3})
	switch {
	case firstFails && !errors.Is(err, broker.ErrInFlight):
		t.Fatalf("third copy while the second runs, after the first failed: %v (handler runs %d), want ErrInFlight: the first copy's late Release dropped the second's claim", err, runs.Load())
	case !firstFails && err != nil:
		t.Fatalf("third copy after the first succeeded: %v (handler runs %d), want nil (skipped as done)", err, runs.Load())
	}
	close(secondReturn)
	if err := <-second; firstFails != (err == nil) {
		t.Fatalf("second copy: %v", err)
	}
	if err := long.Handle(ctx, &broker.Message{ID: id, Attempt: 4}); err != nil {
		t.Fatalf("fourth copy: %v, want nil (skipped as done)", err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

// expect claims key and fails t unless the result is want; it returns the
// claim's token.
func expect(t *testing.T, s broker.IdempotencyStore, key string, lease time.Duration, want broker.ClaimResult) string {
	t.Helper()
	got, tok, err := s.Claim(context.Background(), key, lease)
	must(t, err)
	if got != want {
		t.Fatalf("Claim(%s) = %s, want %s", key, name(got), name(want))
	}
	if (got == broker.Claimed) != (tok != "") {
		t.Fatalf("Claim(%s) = %s with token %q: a token comes with Claimed only", key, name(got), tok)
	}
	return tok
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

// StaleRelease checks what a handler whose lease expired may still do: a and
// b are the same store, or two instances over the same backend (two
// processes). a's claim expires, b takes the key over, then a — late —
// releases its claim: b's claim must survive, and the two tokens must
// differ. Then a — late — completes: the key is done (a's work was done), and
// b's release that follows leaves it done.
func StaleRelease(t *testing.T, a, b broker.IdempotencyStore, key string) {
	ctx := context.Background()
	stale := expect(t, a, key, 50*time.Millisecond, broker.Claimed)
	var tok string
	eventually(t, 5*time.Second, func() bool {
		res, tk, err := b.Claim(ctx, key, time.Minute)
		must(t, err)
		tok = tk
		return res == broker.Claimed
	}, "b never took over a's expired claim of %s", key)
	if tok == stale {
		t.Fatalf("the takeover has the expired claim's token %q", tok)
	}
	must(t, a.Release(ctx, key, stale))
	expect(t, b, key, time.Minute, broker.InFlight)
	expect(t, a, key, time.Minute, broker.InFlight)
	must(t, a.Complete(ctx, key, stale))
	expect(t, b, key, time.Minute, broker.AlreadyDone)
	must(t, b.Release(ctx, key, tok))
	expect(t, a, key, time.Minute, broker.AlreadyDone)
}
