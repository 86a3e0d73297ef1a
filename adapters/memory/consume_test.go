package memory_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/semantics"
)

// Tests of broker.Consume running over the memory broker.

// run starts Consume in the background; stop cancels it and returns its
// error once it has returned.
func run(t *testing.T, sub *broker.Subscriber, h broker.HandlerFunc, opts broker.ConsumeOptions) (stop func() error) {
	t.Helper()
	if opts.OnError == nil {
		opts.OnError = func(*broker.Message, error) {}
	}
	return inBackground(t, func(ctx context.Context) error { return broker.Consume(ctx, sub, h, opts) })
}

// inBackground runs consume until stop (or the end of the test) cancels
// its ctx; stop returns consume's error once it has returned.
func inBackground(t *testing.T, consume func(context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(bg)
	errc := make(chan error, 1)
	go func() { errc <- consume(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitFor waits up to 10s for ch to close.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// countdown closes Done after n calls of Hit.
type countdown struct {
	n    atomic.Int64
	Done chan struct{}
}

func newCountdown(n int) *countdown {
	c := &countdown{Done: make(chan struct{})}
	c.n.Store(int64(n))
	return c
}

func (c *countdown) Hit() {
	if c.n.Add(-1) == 0 {
		close(c.Done)
	}
}

// publishN publishes n messages with ids "<prefix>-<i>" over keys keys
// (none when keys is 0), recording them in l.
func publishN(t *testing.T, pub *broker.Publisher, topic string, n, keys int, l *conformance.Ledger) {
	t.Helper()
	for i := range n {
		m := &broker.Message{ID: fmt.Sprintf("m-%04d", i), Payload: []byte("x")}
		if keys > 0 {
			m.Key = fmt.Sprintf("k-%02d", i%keys)
		}
		publish(t, pub, topic, m)
		if l != nil {
			l.Published(m.ID, m.Key)
		}
	}
}

func TestConsumeAtLeastOnceRetriesFailures(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	l := conformance.NewLedger()
	const n = 300
	publishN(t, newPub(t, b), "t", n, 0, l)
	done := newCountdown(n)
	var failed sync.Map
	stop := run(t, sub, func(ctx context.Context, m *broker.Message) error {
		l.Delivered(m.ID)
		if m.Attempt == 1 && rand.IntN(3) == 0 {
			failed.Store(m.ID, true)
			return errors.New("transient failure")
		}
		if _, was := failed.Load(m.ID); was && m.Attempt < 2 {
			t.Errorf("%s failed and came back with attempt %d", m.ID, m.Attempt)
		}
		l.Handled(m.ID)
		done.Hit()
		return nil
	}, broker.ConsumeOptions{Concurrency: 4})
	waitFor(t, done.Done, "every message handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Keyless messages are not ordered: only loss and duplicates count.
	if r := l.Report(); len(r.Lost) > 0 || r.Duplicates > 0 || r.Handled != n || r.Delivered <= n {
		t.Fatalf("ledger: %v", r)
	}
	if st := depth(t, b, "t", "default"); st.Depth() != 0 || st.Acked != n {
		t.Fatalf("stats: %+v", st)
	}
}

func TestConsumeAtMostOnceNeverRedelivers(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", Guarantee: semantics.AtMostOnce})
	l := conformance.NewLedger()
	const n = 200
	publishN(t, newPub(t, b), "t", n, 0, l)
	done := newCountdown(n)
	var mu sync.Mutex
	deliveries := map[string]int{}
	stop := run(t, sub, func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		deliveries[m.ID]++
		mu.Unlock()
		defer done.Hit()
		if rand.IntN(4) == 0 {
			return errors.New("fails, and is not retried")
		}
		if rand.IntN(20) == 0 {
			panic("so does this")
		}
		l.Handled(m.ID)
		return nil
	}, broker.ConsumeOptions{Concurrency: 4})
	waitFor(t, done.Done, "every message delivered")
	// The broker holds nothing: a redelivery could only come from a
	// message still held.
	if st := depth(t, b, "t", "default"); st.Depth() != 0 || st.Acked != n || st.Redelivered != 0 {
		t.Fatalf("stats: %+v", st)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for id, c := range deliveries {
		if c != 1 {
			t.Errorf("%s delivered %d times under at-most-once", id, c)
		}
	}
	if r := l.Report(); r.Duplicates != 0 || len(r.Lost) == 0 {
		t.Fatalf("ledger: %v (want some lost, none duplicated)", r)
	}
}

func TestConsumePerKeyOrderingUnderFailures(t *testing.T) {
	b := newBroker(t, memory.Options{})
	// Two competing subscribers, each with 8 handlers.
	subs := []*broker.Subscriber{
		newSub(t, b, broker.SubscriberOptions{Topic: "t", Ordering: semantics.PerKey}),
		newSub(t, b, broker.SubscriberOptions{Topic: "t", Ordering: semantics.PerKey}),
	}
	l := conformance.NewLedger()
	const n, keys = 2000, 40
	publishN(t, newPub(t, b), "t", n, keys, l)
	done := newCountdown(n)
	h := func(ctx context.Context, m *broker.Message) error {
		l.Delivered(m.ID)
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond) // the handler's work
		if m.Attempt < 3 && rand.IntN(10) == 0 {
			if rand.IntN(2) == 0 {
				return broker.RetryAfter(errors.New("later"), time.Duration(rand.IntN(3))*time.Millisecond)
			}
			return errors.New("again")
		}
		l.Handled(m.ID)
		done.Hit()
		return nil
	}
	for _, s := range subs {
		run(t, s, h, broker.ConsumeOptions{Concurrency: 8})
	}
	waitFor(t, done.Done, "every message handled")
	if r := l.Report(); !r.OK() || r.Handled != n {
		t.Fatalf("ledger: %v", r)
	}
}

func TestConsumeGracefulShutdown(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "1", "2", "3", "4", "5")...)
	started, finish := make(chan struct{}), make(chan struct{})
	var handled []string
	stop := run(t, sub, func(ctx context.Context, m *broker.Message) error {
		if m.ID == "1" {
			close(started)
			<-finish
		}
		handled = append(handled, m.ID) // one handler at a time
		return nil
	}, broker.ConsumeOptions{Concurrency: 1})
	waitFor(t, started, "the first handler")
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	// Consume must wait for the handler in flight.
	select {
	case err := <-stopped:
		t.Fatalf("Consume returned (%v) while a handler was running", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(finish)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if len(handled) != 1 || handled[0] != "1" {
		t.Fatalf("handled %v, want only the message in flight", handled)
	}
	st := depth(t, b, "t", "default")
	if st.Acked != 1 || st.InFlight != 0 || st.Ready != 4 {
		t.Fatalf("after shutdown: %+v; want 1 acked and the 4 queued ones given back", st)
	}
	next := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	got := map[string]bool{}
	for range 4 {
		d := recv(t, next)
		got[d.Message().ID] = true
		mustAck(t, d)
	}
	if got["1"] || len(got) != 4 {
		t.Fatalf("the next consumer got %v", got)
	}
}

func TestConsumePanicIsNackedAndRedelivered(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "boom", "fine")...)
	done := newCountdown(2)
	var panics atomic.Int32
	var attempts sync.Map
	stop := run(t, sub, func(ctx context.Context, m *broker.Message) error {
		attempts.Store(m.ID, m.Attempt)
		if m.ID == "boom" && m.Attempt == 1 {
			panic("handler bug")
		}
		done.Hit()
		return nil
	}, broker.ConsumeOptions{OnError: func(m *broker.Message, err error) {
		var pe *broker.PanicError
		if errors.As(err, &pe) && m.ID == "boom" {
			panics.Add(1)
		}
	}})
	waitFor(t, done.Done, "both messages handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if a, _ := attempts.Load("boom"); a != 2 || panics.Load() != 1 {
		t.Fatalf("boom: last attempt %v, panics %d", a, panics.Load())
	}
	if st := depth(t, b, "t", "default"); st.Depth() != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

// memStore is a minimal broker.IdempotencyStore for the test: claims are
// leases, completion is forever.
type memStore struct {
	mu     sync.Mutex
	done   map[string]bool
	leases map[string]time.Time
}

func (s *memStore) Claim(ctx context.Context, key string, lease time.Duration) (broker.ClaimResult, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done[key] {
		return broker.AlreadyDone, "", nil
	}
	if until, ok := s.leases[key]; ok && time.Now().Before(until) {
		return broker.InFlight, "", nil
	}
	s.leases[key] = time.Now().Add(lease)
	return broker.Claimed, key, nil // this minimal store does not check tokens
}

func (s *memStore) Complete(ctx context.Context, key, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done[key] = true
	delete(s.leases, key)
	return nil
}

func (s *memStore) Release(ctx context.Context, key, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.leases, key)
	return nil
}

func TestConsumeEffectivelyOnce(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", Guarantee: semantics.EffectivelyOnce})
	pub := newPub(t, b)
	l := conformance.NewLedger()
	const n = 100
	publishN(t, pub, "t", n, 0, l)
	publishN(t, pub, "t", n, 0, nil) // every message published twice on purpose
	store := &memStore{done: map[string]bool{}, leases: map[string]time.Time{}}
	// Each id: one copy handled, the other suppressed as a duplicate.
	settled := newCountdown(2 * n)
	var dupes atomic.Int32
	stop := run(t, sub, func(ctx context.Context, m *broker.Message) error {
		if m.Attempt == 1 && m.ID[len(m.ID)-1] == '0' {
			return errors.New("fails once") // the claim is released: a retry handles it
		}
		l.Handled(m.ID)
		settled.Hit()
		return nil
	}, broker.ConsumeOptions{
		Concurrency: 4,
		Idempotency: store,
		IdempotencyOptions: broker.IdempotencyOptions{
			InFlightDelay: time.Millisecond,
			OnDuplicate:   func(*broker.Message) { dupes.Add(1); settled.Hit() },
		},
	})
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
}
