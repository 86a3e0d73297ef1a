package memory_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/semantics"
)

// Tests of broker.ConsumeBatch running over the memory broker.

// runBatch starts ConsumeBatch in the background; stop cancels it and
// returns its error once it has returned.
func runBatch(t *testing.T, sub *broker.Subscriber, h broker.BatchHandlerFunc, opts broker.BatchOptions) (stop func() error) {
	t.Helper()
	if opts.OnError == nil {
		opts.OnError = func(*broker.Message, error) {}
	}
	return inBackground(t, func(ctx context.Context) error { return broker.ConsumeBatch(ctx, sub, h, opts) })
}

// batchLog records the sizes of the batches a handler saw.
type batchLog struct {
	mu    sync.Mutex
	sizes []int
}

func (l *batchLog) add(n int) {
	l.mu.Lock()
	l.sizes = append(l.sizes, n)
	l.mu.Unlock()
}

func (l *batchLog) get() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int(nil), l.sizes...)
}

func TestConsumeBatchAtLeastOnceSettlesEachMessageByItsResult(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	l := conformance.NewLedger()
	const n = 500
	publishN(t, newPub(t, b), "t", n, 0, l)
	done := newCountdown(n)
	var sizes batchLog
	var failedOnce sync.Map
	stop := runBatch(t, sub, func(ctx context.Context, ms []*broker.Message) []error {
		sizes.add(len(ms))
		res := make([]error, len(ms))
		for i, m := range ms {
			l.Delivered(m.ID)
			if m.Attempt == 1 && rand.IntN(4) == 0 {
				failedOnce.Store(m.ID, true)
				res[i] = broker.RetryAfter(errors.New("this one failed"), time.Millisecond)
				continue
			}
			if _, was := failedOnce.Load(m.ID); was && m.Attempt < 2 {
				t.Errorf("%s failed and came back with attempt %d", m.ID, m.Attempt)
			}
			l.Handled(m.ID)
			done.Hit()
		}
		return res
	}, broker.BatchOptions{MaxBatch: 32, ConsumeOptions: broker.ConsumeOptions{Concurrency: 3}})
	waitFor(t, done.Done, "every message handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if r := l.Report(); len(r.Lost) > 0 || r.Duplicates > 0 || r.Handled != n {
		t.Fatalf("ledger: %v", r)
	}
	if st := depth(t, b, "t", "default"); st.Depth() != 0 || st.Acked != n {
		t.Fatalf("stats: %+v", st)
	}
	biggest := 0
	for _, s := range sizes.get() {
		if s < 1 || s > 32 {
			t.Fatalf("a batch of %d messages (MaxBatch 32)", s)
		}
		biggest = max(biggest, s)
	}
	if biggest < 2 {
		t.Fatalf("no batch of more than one message out of %d queued: sizes %v", n, sizes.get())
	}
}

func TestConsumeBatchMaxWaitFillsABatch(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	pub := newPub(t, b)
	var sizes batchLog
	got := make(chan struct{}, 10)
	runBatch(t, sub, func(ctx context.Context, ms []*broker.Message) []error {
		sizes.add(len(ms))
		got <- struct{}{}
		return nil
	}, broker.BatchOptions{MaxBatch: 5, MaxWait: time.Minute})
	// Published one by one: the batch waits for the fifth (it is full
	// then, long before MaxWait).
	for i := range 5 {
		publish(t, pub, "t", &broker.Message{ID: fmt.Sprint(i)})
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no batch within 10s")
	}
	if s := sizes.get(); len(s) != 1 || s[0] != 5 {
		t.Fatalf("batches %v, want one of 5", s)
	}

	// A batch that does not fill goes when MaxWait has passed, and not
	// before.
	b2 := newBroker(t, memory.Options{})
	sub2 := newSub(t, b2, broker.SubscriberOptions{Topic: "t"})
	const wait = 100 * time.Millisecond
	handledAt := make(chan time.Time, 1)
	runBatch(t, sub2, func(ctx context.Context, ms []*broker.Message) []error {
		handledAt <- time.Now()
		return nil
	}, broker.BatchOptions{MaxBatch: 5, MaxWait: wait})
	published := time.Now()
	publish(t, newPub(t, b2), "t", msgs("", "a", "b")...)
	select {
	case at := <-handledAt:
		if d := at.Sub(published); d < wait {
			t.Fatalf("a batch of 2 (MaxBatch 5) was handled %v after publishing, before MaxWait %v", d, wait)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the batch was not handled within 10s")
	}
}

func TestConsumeBatchAtMostOnceAcksFirstAndNeverRetries(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", Guarantee: semantics.AtMostOnce})
	const n = 200
	publishN(t, newPub(t, b), "t", n, 0, nil)
	done := newCountdown(n)
	var mu sync.Mutex
	seen := map[string]int{}
	var notAcked atomic.Int32
	var reported atomic.Int32
	handed := 0 // one batch at a time
	stop := runBatch(t, sub, func(ctx context.Context, ms []*broker.Message) []error {
		// Every message of the batch was acked before it ran.
		handed += len(ms)
		if st := depth(t, b, "t", "default"); st.Acked < uint64(handed) {
			notAcked.Add(1)
		}
		res := make([]error, len(ms))
		for i, m := range ms {
			mu.Lock()
			seen[m.ID]++
			mu.Unlock()
			if i%3 == 0 {
				res[i] = errors.New("fails, and is not retried")
			}
			done.Hit()
		}
		if rand.IntN(10) == 0 {
			panic("so does this batch")
		}
		return res
	}, broker.BatchOptions{MaxBatch: 16, ConsumeOptions: broker.ConsumeOptions{
		OnError: func(*broker.Message, error) { reported.Add(1) },
	}})
	waitFor(t, done.Done, "every message handed to the handler")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if notAcked.Load() != 0 {
		t.Fatalf("%d batches ran with deliveries not acked yet", notAcked.Load())
	}
	st := depth(t, b, "t", "default")
	if st.Depth() != 0 || st.Acked != n || st.Redelivered != 0 {
		t.Fatalf("stats: %+v", st)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s handled %d times under at-most-once", id, c)
		}
	}
	if reported.Load() == 0 {
		t.Fatal("failures were not reported to OnError")
	}
}

func TestConsumeBatchEffectivelyOnce(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", Guarantee: semantics.EffectivelyOnce})
	pub := newPub(t, b)
	l := conformance.NewLedger()
	const n = 100
	publishN(t, pub, "t", n, 0, l)
	publishN(t, pub, "t", n, 0, nil) // every message published twice on purpose
	store := &memStore{done: map[string]bool{}, leases: map[string]time.Time{}}
	settled := newCountdown(2 * n)
	var dupes atomic.Int32
	stop := runBatch(t, sub, func(ctx context.Context, ms []*broker.Message) []error {
		res := make([]error, len(ms))
		for i, m := range ms {
			if m.Attempt == 1 && strings.HasSuffix(m.ID, "0") {
				res[i] = errors.New("fails once") // the claim is released: a retry handles it
				continue
			}
			l.Handled(m.ID)
			settled.Hit()
		}
		return res
	}, broker.BatchOptions{MaxBatch: 16, ConsumeOptions: broker.ConsumeOptions{
		Concurrency: 2,
		Idempotency: store,
		IdempotencyOptions: broker.IdempotencyOptions{
			InFlightDelay: time.Millisecond,
			OnDuplicate:   func(*broker.Message) { dupes.Add(1); settled.Hit() },
		},
	}})
	waitFor(t, settled.Done, "every copy handled or suppressed")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if r := l.Report(); len(r.Lost) > 0 || r.Duplicates > 0 || r.Handled != n {
		t.Fatalf("ledger: %v", r)
	}
	if dupes.Load() != n {
		t.Fatalf("%d duplicates suppressed, want %d", dupes.Load(), n)
	}
	if st := depth(t, b, "t", "default"); st.Depth() != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestConsumeBatchPerKeyOrderUnderFailures(t *testing.T) {
	b := newBroker(t, memory.Options{})
	subs := []*broker.Subscriber{
		newSub(t, b, broker.SubscriberOptions{Topic: "t", Ordering: semantics.PerKey}),
		newSub(t, b, broker.SubscriberOptions{Topic: "t", Ordering: semantics.PerKey}),
	}
	l := conformance.NewLedger()
	const n, keys = 2000, 40
	publishN(t, newPub(t, b), "t", n, keys, l)
	done := newCountdown(n)
	var inFlight sync.Map // key -> the batch handling it
	h := func(ctx context.Context, ms []*broker.Message) []error {
		batch := new(int)
		for _, m := range ms {
			if other, busy := inFlight.LoadOrStore(m.Key, batch); busy && other != batch {
				t.Errorf("key %s in two batches at once", m.Key)
			}
		}
		defer func() {
			for _, m := range ms {
				inFlight.CompareAndDelete(m.Key, batch)
			}
		}()
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond) // the batch's round trip
		res := make([]error, len(ms))
		failed := map[string]bool{}
		for i, m := range ms {
			l.Delivered(m.ID)
			switch {
			case failed[m.Key]:
				res[i] = errors.New("an earlier message of the key failed")
			case m.Attempt < 3 && rand.IntN(10) == 0:
				failed[m.Key] = true
				res[i] = broker.RetryAfter(errors.New("later"), time.Duration(rand.IntN(3))*time.Millisecond)
			default:
				l.Handled(m.ID)
				done.Hit()
			}
		}
		return res
	}
	for _, s := range subs {
		runBatch(t, s, h, broker.BatchOptions{MaxBatch: 16, ConsumeOptions: broker.ConsumeOptions{Concurrency: 4}})
	}
	waitFor(t, done.Done, "every message handled")
	if r := l.Report(); !r.OK() || r.Handled != n {
		t.Fatalf("ledger: %v", r)
	}
}

func TestConsumeBatchPanicFailsTheBatch(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "a", "b", "c")...)
	done := newCountdown(3)
	var panics atomic.Int32
	var calls atomic.Int32
	var mu sync.Mutex
	attempts := map[string]int{}
	stop := runBatch(t, sub, func(ctx context.Context, ms []*broker.Message) []error {
		if calls.Add(1) == 1 {
			panic("handler bug")
		}
		mu.Lock()
		for _, m := range ms {
			attempts[m.ID] = m.Attempt
			done.Hit()
		}
		mu.Unlock()
		return nil
	}, broker.BatchOptions{MaxBatch: 3, MaxWait: time.Minute, ConsumeOptions: broker.ConsumeOptions{
		OnError: func(m *broker.Message, err error) {
			if pe := (*broker.PanicError)(nil); errors.As(err, &pe) {
				panics.Add(1)
			}
		},
	}})
	waitFor(t, done.Done, "the batch handled after the panic")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if panics.Load() != 3 {
		t.Fatalf("%d messages reported the panic, want the batch's 3", panics.Load())
	}
	for _, id := range []string{"a", "b", "c"} {
		if attempts[id] != 2 {
			t.Fatalf("attempts after the panic: %v, want 2 each", attempts)
		}
	}
	if st := depth(t, b, "t", "default"); st.Depth() != 0 || st.Acked != 3 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestConsumeBatchResultOfTheWrongLengthFailsTheBatch(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "a", "b")...)
	done := newCountdown(2)
	var reported atomic.Int32
	var calls atomic.Int32
	stop := runBatch(t, sub, func(ctx context.Context, ms []*broker.Message) []error {
		if calls.Add(1) == 1 {
			return []error{nil} // one result for two messages
		}
		for range ms {
			done.Hit()
		}
		return nil
	}, broker.BatchOptions{MaxBatch: 2, MaxWait: time.Minute, ConsumeOptions: broker.ConsumeOptions{
		OnError: func(m *broker.Message, err error) {
			if strings.Contains(err.Error(), "1 results for 2 messages") {
				reported.Add(1)
			}
		},
	}})
	waitFor(t, done.Done, "both messages handled again")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if reported.Load() != 2 {
		t.Fatalf("%d messages reported the bad result, want 2", reported.Load())
	}
}

func TestConsumeBatchGracefulShutdown(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	pub := newPub(t, b)
	publish(t, pub, "t", msgs("", "1", "2")...)
	started, finish := make(chan struct{}), make(chan struct{})
	var handled []string
	stop := runBatch(t, sub, func(ctx context.Context, ms []*broker.Message) []error {
		if len(handled) == 0 {
			close(started)
			<-finish
		}
		for _, m := range ms { // one batch at a time
			handled = append(handled, m.ID)
		}
		return nil
	}, broker.BatchOptions{MaxBatch: 2, MaxWait: time.Minute})
	waitFor(t, started, "the first batch")
	// Received while the batch runs, and never started.
	publish(t, pub, "t", msgs("", "3", "4", "5")...)
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	select {
	case err := <-stopped:
		t.Fatalf("ConsumeBatch returned (%v) while a batch was running", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(finish)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if len(handled) != 2 || handled[0] != "1" || handled[1] != "2" {
		t.Fatalf("handled %v, want only the batch in flight", handled)
	}
	if st := depth(t, b, "t", "default"); st.Acked != 2 || st.InFlight != 0 || st.Ready != 3 {
		t.Fatalf("after shutdown: %+v; want 2 acked and the other 3 given back", st)
	}
}

func TestConsumeBatchRefusesBadOptions(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	h := broker.BatchHandlerFunc(func(context.Context, []*broker.Message) []error { return nil })
	for name, call := range map[string]func() error{
		"nil handler":       func() error { return broker.ConsumeBatch(bg, sub, nil, broker.BatchOptions{}) },
		"nil handler func":  func() error { return broker.ConsumeBatch(bg, sub, broker.BatchHandlerFunc(nil), broker.BatchOptions{}) },
		"nil subscriber":    func() error { return broker.ConsumeBatch(bg, nil, h, broker.BatchOptions{}) },
		"negative MaxBatch": func() error { return broker.ConsumeBatch(bg, sub, h, broker.BatchOptions{MaxBatch: -1}) },
		"negative MaxWait":  func() error { return broker.ConsumeBatch(bg, sub, h, broker.BatchOptions{MaxWait: -time.Second}) },
		"store without EffectivelyOnce": func() error {
			return broker.ConsumeBatch(bg, sub, h, broker.BatchOptions{ConsumeOptions: broker.ConsumeOptions{Idempotency: &memStore{}}})
		},
	} {
		if err := call(); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}
