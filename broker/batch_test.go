package broker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/semantics"
)

// logDriver is a test driver whose one subscription hands out what was
// published in publish order, as many deliveries at a time as asked and
// several of one key at once, the way a Kafka partition does (the memory
// broker holds a key's next message back until the last one is acked): the
// per-key order is then Consume's and ConsumeBatch's to keep. A nacked
// message comes back at the front, with Attempt one higher, after its
// delay; the driver records every settlement in order.
type logDriver struct {
	oneAtATime bool // the subscriber has no ReceiveBatch

	received chan string // when not nil, gets the ID of every delivery handed out

	mu      sync.Mutex
	queue   []*logDelivery
	wake    chan struct{}
	settled []string // "+id" for an ack, "-id" for a nack
	closed  bool     // the subscriber was closed: receiving returns ErrClosed
}

func newLog() *logDriver { return &logDriver{wake: make(chan struct{}, 1)} }

func (l *logDriver) Capabilities() semantics.Capabilities {
	return semantics.Capabilities{PerKeyOrdering: true, AttemptCount: true, DelayedNack: true}
}
func (l *logDriver) NewPublisher(context.Context) (driver.Publisher, error) { return logPub{l}, nil }
func (l *logDriver) NewSubscriber(context.Context, driver.SubscriberOptions) (driver.Subscriber, error) {
	if l.oneAtATime {
		return struct{ driver.Subscriber }{logSub{l}}, nil
	}
	return logSub{l}, nil
}
func (l *logDriver) Close(context.Context) error { return nil }

func (l *logDriver) push(front bool, ds ...*logDelivery) {
	l.mu.Lock()
	if front {
		l.queue = append(ds, l.queue...)
	} else {
		l.queue = append(l.queue, ds...)
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *logDriver) settlements() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.settled)
}

type logPub struct{ l *logDriver }

func (p logPub) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	ds := make([]*logDelivery, len(msgs))
	for i, m := range msgs {
		c := m.Clone()
		c.Topic, c.Attempt = topic, 1
		ds[i] = &logDelivery{l: p.l, msg: c}
	}
	p.l.push(false, ds...)
	return nil
}
func (logPub) Close(context.Context) error { return nil }

type logSub struct{ l *logDriver }

func (s logSub) Receive(ctx context.Context) (driver.Delivery, error) {
	var buf [1]driver.Delivery
	if _, err := s.ReceiveBatch(ctx, buf[:]); err != nil {
		return nil, err
	}
	return buf[0], nil
}

func (s logSub) ReceiveBatch(ctx context.Context, buf []driver.Delivery) (int, error) {
	for {
		s.l.mu.Lock()
		if s.l.closed {
			s.l.mu.Unlock()
			return 0, driver.ErrClosed
		}
		n := min(len(buf), len(s.l.queue))
		for i := range n {
			buf[i] = s.l.queue[i]
		}
		s.l.queue = s.l.queue[n:]
		more := len(s.l.queue) > 0
		s.l.mu.Unlock()
		if s.l.received != nil {
			for _, d := range buf[:n] {
				s.l.received <- d.Message().ID
			}
		}
		if more {
			select {
			case s.l.wake <- struct{}{}:
			default:
			}
		}
		if n > 0 {
			return n, nil
		}
		select {
		case <-s.l.wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
func (s logSub) Close(context.Context) error {
	s.l.mu.Lock()
	s.l.closed = true
	s.l.mu.Unlock()
	select { // wake a waiting receiver
	case s.l.wake <- struct{}{}:
	default:
	}
	return nil
}

type logDelivery struct {
	l   *logDriver
	msg *broker.Message
}

func (d *logDelivery) Message() *broker.Message { return d.msg }
func (d *logDelivery) Ack(context.Context) error {
	d.l.mu.Lock()
	d.l.settled = append(d.l.settled, "+"+d.msg.ID)
	d.l.mu.Unlock()
	return nil
}
func (d *logDelivery) Nack(_ context.Context, delay time.Duration) error {
	d.l.mu.Lock()
	d.l.settled = append(d.l.settled, "-"+d.msg.ID)
	d.l.mu.Unlock()
	again := &logDelivery{l: d.l, msg: d.msg.Clone()}
	again.msg.Attempt++
	time.AfterFunc(delay, func() { d.l.push(true, again) })
	return nil
}

// logTopic makes a log broker and its PerKey subscriber, and publishes n
// messages over keys keys ("k-<i%keys>", ids "m-<i>"), recording them in l.
func logTopic(t *testing.T, n, keys int, opts broker.SubscriberOptions, l *conformance.Ledger) (*logDriver, *broker.Subscriber) {
	return logTopicOf(t, newLog(), n, keys, opts, l)
}

func logTopicOf(t *testing.T, ld *logDriver, n, keys int, opts broker.SubscriberOptions, l *conformance.Ledger) (*logDriver, *broker.Subscriber) {
	t.Helper()
	b := broker.New(ld)
	t.Cleanup(func() { b.Close(context.Background()) })
	opts.Topic = "t"
	sub, err := b.NewSubscriber(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := b.NewPublisher(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ms := make([]*broker.Message, n)
	for i := range ms {
		ms[i] = &broker.Message{ID: fmt.Sprintf("m-%04d", i), Key: fmt.Sprintf("k-%d", i%keys)}
		if l != nil {
			l.Published(ms[i].ID, ms[i].Key)
		}
	}
	if err := pub.Publish(context.Background(), "t", ms...); err != nil {
		t.Fatal(err)
	}
	return ld, sub
}

// consumeBatchInBackground runs ConsumeBatch until the test ends.
func consumeBatchInBackground(t *testing.T, sub *broker.Subscriber, h broker.BatchHandlerFunc, opts broker.BatchOptions) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- broker.ConsumeBatch(ctx, sub, h, opts) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// keyGuard fails the test when a key is in two batches (or handlers) at once.
type keyGuard struct {
	t    *testing.T
	held sync.Map // key -> owner
}

func (g *keyGuard) enter(owner any, keys ...string) {
	for _, k := range keys {
		if other, busy := g.held.LoadOrStore(k, owner); busy && other != owner {
			g.t.Errorf("key %s handled in two places at once", k)
		}
	}
}

func (g *keyGuard) leave(owner any, keys ...string) {
	for _, k := range keys {
		g.held.CompareAndDelete(k, owner)
	}
}

func TestConsumeBatchPerKeyOverALog(t *testing.T) {
	l := conformance.NewLedger()
	const n, keys = 3000, 12 // many messages of one key in each receive
	_, sub := logTopic(t, n, keys, broker.SubscriberOptions{Ordering: semantics.PerKey}, l)
	guard := &keyGuard{t: t}
	var handled atomic.Int64
	all := make(chan struct{})
	var sizes sync.Map
	h := func(ctx context.Context, ms []*broker.Message) []error {
		owner := new(int)
		ks := make([]string, len(ms))
		for i, m := range ms {
			ks[i] = m.Key
		}
		guard.enter(owner, ks...)
		defer guard.leave(owner, ks...)
		sizes.Store(len(ms), true)
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		res := make([]error, len(ms))
		failed := map[string]bool{}
		for i, m := range ms {
			l.Delivered(m.ID)
			switch {
			case failed[m.Key]:
				res[i] = errors.New("an earlier message of the key failed")
			case m.Attempt < 3 && rand.IntN(15) == 0:
				failed[m.Key] = true
				res[i] = broker.RetryAfter(errors.New("later"), time.Duration(rand.IntN(2))*time.Millisecond)
			default:
				l.Handled(m.ID)
				if handled.Add(1) == n {
					close(all)
				}
			}
		}
		return res
	}
	stop := consumeBatchInBackground(t, sub, h, broker.BatchOptions{MaxBatch: 20, ConsumeOptions: broker.ConsumeOptions{Concurrency: 4}})
	wait(t, all, "every message handled")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if r := l.Report(); !r.OK() || r.Handled != n {
		t.Fatalf("ledger: %v", r)
	}
	if _, many := sizes.Load(20); !many {
		t.Error("no batch was full, with 3000 messages queued")
	}
}

// A key's later messages of a batch are neither acked ahead of its failed
// message nor left out: they are handed to the handler again after it.
func TestConsumeBatchKeepsALaterMessageBehindAFailedOne(t *testing.T) {
	ld, sub := logTopic(t, 3, 1, broker.SubscriberOptions{Ordering: semantics.PerKey}, nil) // m-0000..2, one key
	var mu sync.Mutex
	var calls [][]string
	done := make(chan struct{})
	h := func(ctx context.Context, ms []*broker.Message) []error {
		mu.Lock()
		defer mu.Unlock()
		var ids []string
		res := make([]error, len(ms))
		for i, m := range ms {
			ids = append(ids, fmt.Sprintf("%s@%d", m.ID, m.Attempt))
			if m.ID == "m-0001" && m.Attempt == 1 {
				res[i] = errors.New("fails once") // m-0002 succeeds, but after it
			}
		}
		calls = append(calls, ids)
		if len(calls) == 2 {
			close(done)
		}
		return res
	}
	stop := consumeBatchInBackground(t, sub, h, broker.BatchOptions{MaxBatch: 3, MaxWait: time.Minute})
	wait(t, done, "the retry")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"m-0000@1", "m-0001@1", "m-0002@1"}, {"m-0001@2", "m-0002@2"}}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Fatalf("batches %v, want %v", calls, want)
	}
	if got := ld.settlements(); fmt.Sprint(got) != "[+m-0000 +m-0001 +m-0002]" {
		t.Fatalf("settled %v; want all three acked in order, none nacked", got)
	}
}

// A failed message whose attempts are used up is given back (for the
// broker to dead-letter) and its key's later messages go on.
func TestConsumeBatchGivesBackAMessageAtMaxAttempts(t *testing.T) {
	ld, sub := logTopic(t, 3, 1, broker.SubscriberOptions{Ordering: semantics.PerKey, MaxAttempts: 2}, nil)
	done := make(chan struct{})
	var once sync.Once
	h := func(ctx context.Context, ms []*broker.Message) []error {
		res := make([]error, len(ms))
		for i, m := range ms {
			switch {
			case m.ID == "m-0001" && m.Attempt <= 2:
				res[i] = errors.New("always fails")
			case m.ID == "m-0002" && m.Attempt == 2:
				once.Do(func() { close(done) })
			}
		}
		return res
	}
	stop := consumeBatchInBackground(t, sub, h, broker.BatchOptions{MaxBatch: 3, MaxWait: time.Minute})
	wait(t, done, "the key's last message handled after the failed one")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// (This log broker does not dead-letter: m-0001 comes back after.)
	if got := ld.settlements(); len(got) < 3 || fmt.Sprint(got[:3]) != "[+m-0000 -m-0001 +m-0002]" {
		t.Fatalf("settled %v; want m-0000 acked, m-0001 given back, then m-0002 acked", got)
	}
}

// Consume's per-key dispatch over a broker that hands out many messages of
// one key at once: one handler per key at a time, in order, failures
// retried in place; with batch receives (workers receive for themselves)
// and without (a goroutine prefetches).
func TestConsumePerKeyOverALog(t *testing.T) {
	for _, one := range []bool{false, true} {
		t.Run(fmt.Sprintf("oneAtATime=%v", one), func(t *testing.T) { testConsumePerKeyOverALog(t, one) })
	}
}

func testConsumePerKeyOverALog(t *testing.T, oneAtATime bool) {
	l := conformance.NewLedger()
	const n, keys = 3000, 12
	_, sub := logTopicOf(t, &logDriver{oneAtATime: oneAtATime, wake: make(chan struct{}, 1)}, n, keys, broker.SubscriberOptions{Ordering: semantics.PerKey}, l)
	guard := &keyGuard{t: t}
	var handled atomic.Int64
	all := make(chan struct{})
	h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		owner := new(int)
		guard.enter(owner, m.Key)
		defer guard.leave(owner, m.Key)
		l.Delivered(m.ID)
		if m.Attempt < 3 && rand.IntN(20) == 0 {
			return broker.RetryAfter(errors.New("later"), time.Duration(rand.IntN(2))*time.Millisecond)
		}
		l.Handled(m.ID)
		if handled.Add(1) == n {
			close(all)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- broker.Consume(ctx, sub, h, broker.ConsumeOptions{Concurrency: 6, OnError: func(*broker.Message, error) {}})
	}()
	wait(t, all, "every message handled")
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if r := l.Report(); !r.OK() || r.Handled != n {
		t.Fatalf("ledger: %v", r)
	}
}

// With an adapter that hands out one delivery per call, Consume's
// prefetched deliveries are given back at shutdown, while the handlers
// running finish and are acked.
func TestConsumeGivesBackPrefetchedDeliveriesAtShutdown(t *testing.T) {
	ld := &logDriver{oneAtATime: true, wake: make(chan struct{}, 1), received: make(chan string, 100)}
	_, sub := logTopicOf(t, ld, 10, 1, broker.SubscriberOptions{}, nil)
	started, finish := make(chan string, 10), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			started <- m.ID
			<-finish
			return nil
		}), broker.ConsumeOptions{Concurrency: 2, OnError: func(*broker.Message, error) {}})
	}()
	// Two handlers running, and two more deliveries prefetched (up to
	// Concurrency): four received, no more.
	for range 4 {
		select {
		case <-ld.received:
		case <-time.After(10 * time.Second):
			t.Fatal("Consume did not receive 4 deliveries")
		}
	}
	running := map[string]bool{}
	for range 2 {
		running[<-started] = true
	}
	cancel()
	close(finish)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	var acked, nacked int
	for _, s := range ld.settlements() {
		switch id := s[1:]; {
		case s[0] == '+' && running[id]:
			acked++
		case s[0] == '-' && !running[id]:
			nacked++
		default:
			t.Errorf("unexpected settlement %s (running: %v)", s, running)
		}
	}
	if acked != 2 || nacked != 2 || len(started) != 0 {
		t.Fatalf("settled %v: want the 2 running acked, the 2 prefetched given back, nothing else started", ld.settlements())
	}
}
