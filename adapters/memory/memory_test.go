package memory_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/semantics"
)

// ---- helpers ----

func newBroker(t *testing.T, opts memory.Options) *broker.Broker {
	t.Helper()
	b := broker.New(memory.New(opts))
	t.Cleanup(func() { b.Close(context.Background()) })
	return b
}

// mem is the memory driver under b, for Depth and Stats.
func mem(t testing.TB, b *broker.Broker) *memory.Broker {
	var m *memory.Broker
	if !b.As(&m) {
		t.Fatal("As(*memory.Broker) = false")
	}
	return m
}

func newPub(t *testing.T, b *broker.Broker) *broker.Publisher {
	t.Helper()
	p, err := b.NewPublisher(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

func newSub(t *testing.T, b *broker.Broker, opts broker.SubscriberOptions) *broker.Subscriber {
	t.Helper()
	s, err := b.NewSubscriber(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func publish(t *testing.T, p *broker.Publisher, topic string, msgs ...*broker.Message) {
	t.Helper()
	if err := p.Publish(context.Background(), topic, msgs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func msgs(key string, ids ...string) []*broker.Message {
	out := make([]*broker.Message, len(ids))
	for i, id := range ids {
		out[i] = &broker.Message{ID: id, Key: key, Payload: []byte("payload-" + id)}
	}
	return out
}

// recv waits up to 5s for a delivery.
func recv(t *testing.T, s *broker.Subscriber) *broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return d
}

// noRecv asserts that nothing is delivered within wait. (Proving absence
// takes waiting; this is not synchronisation.)
func noRecv(t *testing.T, s *broker.Subscriber, wait time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	d, err := s.Receive(ctx)
	if err == nil {
		t.Fatalf("unexpected delivery of %s (attempt %d)", d.Message().ID, d.Message().Attempt)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("receive: %v, want deadline exceeded", err)
	}
}

func mustAck(t *testing.T, d *broker.Delivery) {
	t.Helper()
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("ack %s: %v", d.Message().ID, err)
	}
}

func depth(t *testing.T, b *broker.Broker, topic, group string) memory.GroupStats {
	t.Helper()
	st, ok := mem(t, b).Depth(topic, group)
	if !ok {
		t.Fatalf("no group %s/%s", topic, group)
	}
	return st
}

var bg = context.Background()

// ---- tests ----

func TestRoundtripCopiesAndStamps(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	pub := newPub(t, b)
	payload := []byte("hello \x00 world")
	headers := map[string]string{"h": "v"}
	m := &broker.Message{Key: "k", Payload: payload, Headers: headers}
	publish(t, pub, "t", m)
	if m.ID == "" || m.PublishedAt.IsZero() {
		t.Fatalf("Publish did not set ID and PublishedAt on the caller's message: %+v", m)
	}
	// The caller may reuse its buffers at once.
	copy(payload, "XXXXX")
	headers["h"] = "changed"

	d := recv(t, sub)
	got := d.Message()
	if got.ID != m.ID || got.Key != "k" || string(got.Payload) != "hello \x00 world" || got.Header("h") != "v" {
		t.Fatalf("delivered %+v", got)
	}
	if got.Topic != "t" || got.Attempt != 1 || !got.PublishedAt.Equal(m.PublishedAt) {
		t.Fatalf("topic %q attempt %d publishedAt %v", got.Topic, got.Attempt, got.PublishedAt)
	}
	if st := depth(t, b, "t", "default"); st.InFlight != 1 || st.Ready != 0 {
		t.Fatalf("stats while in flight: %+v", st)
	}
	mustAck(t, d)
	if st := depth(t, b, "t", "default"); st.Depth() != 0 || st.Acked != 1 || st.Published != 1 {
		t.Fatalf("stats after ack: %+v", st)
	}
}

// Every field of a published Message reaches its deliveries, to one group
// or several, or is set on delivery; entry.init copies them one by one, so
// a field added to Message fails here until it is carried.
func TestDeliveriesCarryEveryField(t *testing.T) {
	carried := map[string]bool{"ID": true, "Key": true, "Payload": true, "Headers": true, "PublishedAt": true}
	setOnDelivery := map[string]bool{"Topic": true, "Attempt": true, "DeliverAt": true}
	typ := reflect.TypeFor[broker.Message]()
	for f := range typ.Fields() {
		if !carried[f.Name] && !setOnDelivery[f.Name] {
			t.Errorf("broker.Message has a field %s that this test (and entry.init) does not know", f.Name)
		}
	}
	for _, groups := range []int{1, 2} {
		b := newBroker(t, memory.Options{})
		topic := fmt.Sprintf("t%d", groups)
		var subs []*broker.Subscriber
		for g := range groups {
			subs = append(subs, newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: fmt.Sprint("g", g)}))
		}
		m := &broker.Message{
			ID: "id", Key: "k", Payload: []byte("p"), Headers: map[string]string{"h": "v"},
			Topic: "ignored", Attempt: 7, PublishedAt: time.Unix(1e9, 5),
			DeliverAt: time.Now().Add(-time.Hour), // in the past: at once
		}
		publish(t, newPub(t, b), topic, m)
		for _, sub := range subs {
			got := recv(t, sub).Message()
			want := *m
			want.Topic, want.Attempt, want.DeliverAt = topic, 1, time.Time{}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("%d groups: delivered %+v, want %+v", groups, *got, want)
			}
		}
	}
}

func TestSettleIsIdempotent(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "1", "2")...)
	d := recv(t, sub)
	mustAck(t, d)
	mustAck(t, d)
	if err := d.Nack(bg, 0); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Fatalf("Nack after Ack = %v, want ErrAlreadySettled", err)
	}
	d = recv(t, sub)
	if err := d.Nack(bg, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := d.Nack(bg, 0); err != nil {
		t.Fatalf("second Nack = %v, want nil", err)
	}
	if err := d.Ack(bg); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Fatalf("Ack after Nack = %v, want ErrAlreadySettled", err)
	}
}

// The topology rule: Publish to a topic without a group is refused; a
// declared group receives everything published after its declaration, a
// group declared later only what comes after it.
func TestDeclaredGroupReceivesLaterPublishes(t *testing.T) {
	b := newBroker(t, memory.Options{})
	pub := newPub(t, b)
	if err := pub.Publish(bg, "t", msgs("", "nobody")...); !errors.Is(err, broker.ErrNoGroup) {
		t.Fatalf("publish before any group = %v, want ErrNoGroup", err)
	}
	if err := b.Declare(bg, "t", "first"); err != nil {
		t.Fatal(err)
	}
	publish(t, pub, "t", msgs("", "early")...)
	if st := depth(t, b, "t", "first"); st.Ready != 1 {
		t.Fatalf("held for the declared group: %+v", st)
	}
	first := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "first"})
	second := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "second"})
	if d := recv(t, first); d.Message().ID != "early" {
		t.Fatalf("first group got %s", d.Message().ID)
	}
	noRecv(t, second, 50*time.Millisecond) // created after the publish
}

func TestFanOutAndCompetingConsumers(t *testing.T) {
	b := newBroker(t, memory.Options{})
	a1 := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "a"})
	a2 := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "a"})
	bs := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "b"})
	const n = 200
	var all []*broker.Message
	for i := range n {
		all = append(all, &broker.Message{ID: fmt.Sprint(i)})
	}
	publish(t, newPub(t, b), "t", all...)

	// Competing: what one subscriber holds, the other does not get.
	d1, d2 := recv(t, a1), recv(t, a2)
	if d1.Message().ID != "0" || d2.Message().ID != "1" {
		t.Fatalf("a1 got %s, a2 got %s; want 0 and 1", d1.Message().ID, d2.Message().ID)
	}
	mustAck(t, d1)
	mustAck(t, d2)
	seenA := map[string]int{"0": 1, "1": 1}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	for _, s := range []*broker.Subscriber{a1, a2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := s.Receive(ctx)
				if err != nil {
					return
				}
				mu.Lock()
				seenA[d.Message().ID]++
				done := len(seenA) == n
				mu.Unlock()
				d.Ack(ctx)
				if done {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	for id, c := range seenA {
		if c != 1 {
			t.Errorf("group a got %s %d times", id, c)
		}
	}
	if len(seenA) != n {
		t.Fatalf("group a got %d of %d", len(seenA), n)
	}
	for i := range n {
		d := recv(t, bs)
		if d.Message().ID != fmt.Sprint(i) {
			t.Fatalf("group b message %d is %s, want publish order", i, d.Message().ID)
		}
		mustAck(t, d)
	}
}

func TestNackRedeliversWithAttempt(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "1", "2")...)
	d := recv(t, sub)
	if d.Message().ID != "1" || d.Message().Attempt != 1 {
		t.Fatalf("got %s attempt %d", d.Message().ID, d.Message().Attempt)
	}
	if err := d.Nack(bg, 0); err != nil {
		t.Fatal(err)
	}
	for want := 2; want <= 4; want++ {
		d = recv(t, sub)
		if d.Message().ID != "1" || d.Message().Attempt != want {
			t.Fatalf("got %s attempt %d, want 1 attempt %d (redelivery first)", d.Message().ID, d.Message().Attempt, want)
		}
		if want < 4 {
			d.Nack(bg, 0)
		}
	}
	mustAck(t, d)
	if d = recv(t, sub); d.Message().ID != "2" || d.Message().Attempt != 1 {
		t.Fatalf("got %s attempt %d", d.Message().ID, d.Message().Attempt)
	}
	if st := depth(t, b, "t", "default"); st.Redelivered != 3 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestNackDelayIsHonoured(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "slow", "fast")...)
	d := recv(t, sub)
	const delay = 150 * time.Millisecond
	nacked := time.Now()
	if err := d.Nack(bg, delay); err != nil {
		t.Fatal(err)
	}
	if st := depth(t, b, "t", "default"); st.Delayed != 1 {
		t.Fatalf("stats: %+v", st)
	}
	// The other message is not held up by the delay.
	if d := recv(t, sub); d.Message().ID != "fast" {
		t.Fatalf("got %s, want fast", d.Message().ID)
	} else {
		mustAck(t, d)
	}
	d = recv(t, sub)
	if el := time.Since(nacked); el < delay {
		t.Fatalf("redelivered after %v, before the nack delay %v", el, delay)
	}
	if d.Message().ID != "slow" || d.Message().Attempt != 2 {
		t.Fatalf("got %s attempt %d", d.Message().ID, d.Message().Attempt)
	}
}

func TestAckTimeoutRedelivers(t *testing.T) {
	b := newBroker(t, memory.Options{AckTimeout: time.Hour})
	const timeout = 100 * time.Millisecond
	crashed := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "g", AckTimeout: timeout})
	other := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "g"})
	publish(t, newPub(t, b), "t", msgs("", "1")...)
	// The stopwatch starts before the receive: the broker sets the
	// deadline when it hands the message out, before recv returns (started
	// after it, a loaded machine saw 99.48ms "before" the 100ms timeout).
	start := time.Now()
	d1 := recv(t, crashed)
	// Never settled: the broker must give it to the group again.
	d2 := recv(t, other)
	if el := time.Since(start); el < timeout {
		t.Fatalf("redelivered after %v, before the ack timeout %v", el, timeout)
	}
	if d2.Message().ID != "1" || d2.Message().Attempt != 2 {
		t.Fatalf("got %s attempt %d", d2.Message().ID, d2.Message().Attempt)
	}
	if d1.Message().Attempt != 1 {
		t.Fatalf("the first delivery's message changed: attempt %d", d1.Message().Attempt)
	}
	if err := d1.Ack(bg); !errors.Is(err, memory.ErrExpired) {
		t.Fatalf("late Ack = %v, want ErrExpired", err)
	}
	if st := depth(t, b, "t", "g"); st.InFlight != 1 {
		t.Fatalf("the late ack must not settle the new delivery: %+v", st)
	}
	mustAck(t, d2)
	if st := depth(t, b, "t", "g"); st.Depth() != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestURLAckTimeout(t *testing.T) {
	b, err := broker.Open(bg, "mem://acktimeout?ack_timeout=50ms")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(bg)
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "1")...)
	recv(t, sub)
	if d := recv(t, sub); d.Message().Attempt != 2 {
		t.Fatalf("attempt %d", d.Message().Attempt)
	}
}

func TestSubscriberCloseRedeliversAtOnce(t *testing.T) {
	b := newBroker(t, memory.Options{}) // 30s ack timeout: only Close can free them
	s1 := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	s2 := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	publish(t, newPub(t, b), "t", msgs("", "1", "2", "3")...)
	buf := make([]*broker.Delivery, 3)
	n, err := s1.ReceiveBatch(bg, buf)
	if err != nil || n != 3 {
		t.Fatalf("ReceiveBatch = %d, %v", n, err)
	}
	if err := s1.Close(bg); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1", "2", "3"} {
		d := recv(t, s2)
		if d.Message().ID != want || d.Message().Attempt != 2 {
			t.Fatalf("got %s attempt %d, want %s attempt 2", d.Message().ID, d.Message().Attempt, want)
		}
		mustAck(t, d)
	}
	// Package broker answers for every adapter: the driver is not asked.
	if err := buf[0].Ack(bg); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Ack after the subscriber closed = %v, want ErrClosed", err)
	}
	if _, err := s1.Receive(bg); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Receive after Close = %v", err)
	}
}

func TestDeadLetterAfterMaxAttempts(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "orders", MaxAttempts: 3})
	m := &broker.Message{ID: "poison", Key: "k", Payload: []byte("p"), Headers: map[string]string{"h": "v"}}
	publish(t, newPub(t, b), "orders", m, &broker.Message{ID: "next", Key: "k"})
	for attempt := 1; attempt <= 3; attempt++ {
		d := recv(t, sub)
		if d.Message().ID != "poison" || d.Message().Attempt != attempt {
			t.Fatalf("got %s attempt %d, want poison attempt %d", d.Message().ID, d.Message().Attempt, attempt)
		}
		d.Nack(bg, 0)
	}
	// The next message of the key goes once the poison one is dead.
	if d := recv(t, sub); d.Message().ID != "next" {
		t.Fatalf("got %s", d.Message().ID)
	} else {
		mustAck(t, d)
	}
	dlq := newSub(t, b, broker.SubscriberOptions{Topic: "orders.dlq"})
	d := recv(t, dlq)
	got := d.Message()
	if got.ID != "poison" || got.Key != "k" || string(got.Payload) != "p" || got.Header("h") != "v" || got.Topic != "orders.dlq" || got.Attempt != 1 {
		t.Fatalf("dead letter %+v", got)
	}
	if got.Header(broker.HeaderOriginalTopic) != "orders" || got.Header(broker.HeaderDeadAttempts) != "3" ||
		!strings.Contains(got.Header(broker.HeaderDeadReason), "nacked") {
		t.Fatalf("dead letter headers %v", got.Headers)
	}
	if st := depth(t, b, "orders", "default"); st.DeadLettered != 1 || st.Depth() != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestDeadLetterAfterAckTimeouts(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", MaxAttempts: 2, AckTimeout: 20 * time.Millisecond, DeadLetterTopic: "graveyard"})
	dlq := newSub(t, b, broker.SubscriberOptions{Topic: "graveyard"})
	publish(t, newPub(t, b), "t", msgs("", "crash")...)
	recv(t, sub)
	recv(t, sub)
	d := recv(t, dlq)
	if d.Message().ID != "crash" || !strings.Contains(d.Message().Header(broker.HeaderDeadReason), "ack timeout") {
		t.Fatalf("dead letter %+v", d.Message())
	}
}

func TestPerKeyOrderHoldsThroughNacksAndTimeouts(t *testing.T) {
	b := newBroker(t, memory.Options{})
	s1 := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	s2 := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	crashy := newSub(t, b, broker.SubscriberOptions{Topic: "t", AckTimeout: 50 * time.Millisecond})
	publish(t, newPub(t, b), "t", append(msgs("a", "a1", "a2", "a3"), msgs("b", "b1")...)...)
	buf := make([]*broker.Delivery, 10)
	n, err := s1.ReceiveBatch(bg, buf)
	if err != nil || n != 2 || buf[0].Message().ID != "a1" || buf[1].Message().ID != "b1" {
		t.Fatalf("one message per key at a time: got %d (%v)", n, err)
	}
	mustAck(t, buf[1])
	// a1 is in flight: nobody gets a2.
	noRecv(t, s2, 20*time.Millisecond)
	if err := buf[0].Nack(bg, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// a1 waits for its delay: a2 still must not overtake it.
	d := recv(t, s2)
	if d.Message().ID != "a1" || d.Message().Attempt != 2 {
		t.Fatalf("got %s attempt %d, want a1 attempt 2", d.Message().ID, d.Message().Attempt)
	}
	if st := depth(t, b, "t", "default"); st.Blocked != 2 {
		t.Fatalf("stats: %+v", st)
	}
	mustAck(t, d)
	// a2 goes to crashy, which then "crashes": a3 waits for the ack timeout.
	d = recv(t, crashy)
	if d.Message().ID != "a2" {
		t.Fatalf("got %s", d.Message().ID)
	}
	if d = recv(t, s2); d.Message().ID != "a2" || d.Message().Attempt != 2 {
		t.Fatalf("got %s attempt %d, want a2 redelivered after the ack timeout", d.Message().ID, d.Message().Attempt)
	}
	mustAck(t, d)
	if d = recv(t, s2); d.Message().ID != "a3" {
		t.Fatalf("got %s", d.Message().ID)
	}
	mustAck(t, d)
}

func TestBackpressure(t *testing.T) {
	b := newBroker(t, memory.Options{Buffer: 2})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	pub := newPub(t, b)
	publish(t, pub, "t", msgs("", "1", "2")...)

	ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel()
	err := pub.Publish(ctx, "t", msgs("", "x")...)
	if !errors.Is(err, context.DeadlineExceeded) || broker.KindOf(err) != semantics.Canceled {
		t.Fatalf("Publish into a full group = %v, want a deadline exceeded of kind canceled", err)
	}
	// A batch that only partly fits reports the messages not published.
	d1 := recv(t, sub)
	mustAck(t, d1)
	ctx, cancel = context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel()
	err = pub.Publish(ctx, "t", msgs("", "3", "4")...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].ID != "4" || pe.Failed[0].Index != 1 {
		t.Fatalf("partial publish = %v, want a PublishError naming 4", err)
	}

	// A waiting Publish goes through once a message is acked.
	done := make(chan error, 1)
	go func() { done <- pub.Publish(bg, "t", msgs("", "5")...) }()
	d2 := recv(t, sub)
	if d2.Message().ID != "2" {
		t.Fatalf("got %s", d2.Message().ID)
	}
	select {
	case err := <-done:
		t.Fatalf("Publish returned %v while the group was full", err)
	default:
	}
	mustAck(t, d2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"3", "5"} {
		if d := recv(t, sub); d.Message().ID != want {
			t.Fatalf("got %s, want %s", d.Message().ID, want)
		} else {
			mustAck(t, d)
		}
	}
}

func TestCloseSemantics(t *testing.T) {
	b := broker.New(memory.New(memory.Options{Buffer: 1}))
	pub, _ := b.NewPublisher(bg)
	sub, _ := b.NewSubscriber(bg, broker.SubscriberOptions{Topic: "t"})
	full, _ := b.NewSubscriber(bg, broker.SubscriberOptions{Topic: "full"})
	_ = full
	publish(t, pub, "full", msgs("", "1")...)

	recvErr := make(chan error, 1)
	go func() { _, err := sub.Receive(bg); recvErr <- err }()
	pubErr := make(chan error, 1)
	go func() { pubErr <- pub.Publish(bg, "full", msgs("", "2")...) }()

	if err := b.Close(bg); err != nil {
		t.Fatal(err)
	}
	if err := <-recvErr; !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("waiting Receive = %v, want ErrClosed", err)
	}
	if err := <-pubErr; !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("waiting Publish = %v, want ErrClosed", err)
	}
	if err := pub.Publish(bg, "t", msgs("", "3")...); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Publish after Close = %v", err)
	}
	if _, err := sub.Receive(bg); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Receive after Close = %v", err)
	}
	if _, err := b.NewPublisher(bg); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("NewPublisher after Close = %v", err)
	}
	if _, err := b.NewSubscriber(bg, broker.SubscriberOptions{Topic: "t"}); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("NewSubscriber after Close = %v", err)
	}
	if err := b.Close(bg); err != nil {
		t.Fatalf("second Close = %v", err)
	}

	// Closing a publisher alone.
	b2 := newBroker(t, memory.Options{})
	p2 := newPub(t, b2)
	p2.Close(bg)
	if err := p2.Publish(bg, "t", msgs("", "1")...); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Publish after publisher Close = %v", err)
	}
}

func TestOversizeFailsBeforePublishing(t *testing.T) {
	b := newBroker(t, memory.Options{MaxMessageSize: 100})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	big := &broker.Message{ID: "big", Payload: make([]byte, 101)}
	err := newPub(t, b).Publish(bg, "t", &broker.Message{ID: "small"}, big)
	var tl *broker.TooLargeError
	if !errors.Is(err, broker.ErrTooLarge) || !errors.As(err, &tl) || tl.ID != "big" || tl.Max != 100 {
		t.Fatalf("Publish oversize = %v", err)
	}
	noRecv(t, sub, 20*time.Millisecond) // not even the small one
	if got := b.Capabilities().MaxMessageSize; got != 100 {
		t.Fatalf("Capabilities.MaxMessageSize = %d", got)
	}
	if got := memory.New(memory.Options{}).Capabilities().MaxMessageSize; got != memory.DefaultMaxMessageSize {
		t.Fatalf("default MaxMessageSize = %d", got)
	}
	if got := memory.New(memory.Options{MaxMessageSize: -1}).Capabilities().MaxMessageSize; got != 0 {
		t.Fatalf("unlimited MaxMessageSize = %d", got)
	}
}

func TestOpenURL(t *testing.T) {
	_, err := broker.Open(bg, "mem://?buffer=10&colour=red&ack_timeout=x")
	if err == nil || broker.KindOf(err) != semantics.InvalidArgument {
		t.Fatalf("Open with bad parameters = %v", err)
	}
	for _, want := range []string{"unknown URL parameter(s) colour", "valid: ack_timeout, buffer, max_size", "ack_timeout=\"x\" is not a duration"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := broker.Open(bg, "mem://?buffer=0"); err == nil {
		t.Error("buffer=0 accepted")
	}
	if _, err := broker.Open(bg, "mem://x/path"); err == nil {
		t.Error("a path accepted")
	}

	// Two Opens of one name share a broker until both are closed.
	b1, err := broker.Open(bg, "mem://shared?buffer=10&max_size=-1")
	if err != nil {
		t.Fatal(err)
	}
	b2, err := broker.Open(bg, "mem://shared")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := broker.Open(bg, "mem://shared?buffer=20"); err == nil || !strings.Contains(err.Error(), "buffer=10") {
		t.Fatalf("Open with another buffer = %v", err)
	}
	other, _ := broker.Open(bg, "mem://other")
	defer other.Close(bg)
	sub, _ := b2.NewSubscriber(bg, broker.SubscriberOptions{Topic: "t"})
	osub, _ := other.NewSubscriber(bg, broker.SubscriberOptions{Topic: "t"})
	pub, _ := b1.NewPublisher(bg)
	publish(t, pub, "t", msgs("", "1")...)
	if d := recv(t, sub); d.Message().ID != "1" {
		t.Fatal(d.Message().ID)
	}
	noRecv(t, osub, 20*time.Millisecond)
	b1.Close(bg)
	// b2 still works after b1 closed.
	pub2, _ := b2.NewPublisher(bg)
	publish(t, pub2, "t", msgs("", "2")...)
	if d := recv(t, sub); d.Message().ID != "2" {
		t.Fatal(d.Message().ID)
	}
	b2.Close(bg)
	// Once all are closed the name starts afresh.
	b3, _ := broker.Open(bg, "mem://shared")
	defer b3.Close(bg)
	if st := mem(t, b3).Stats(); len(st) != 0 {
		t.Fatalf("a reopened broker has %v", st)
	}
}

func TestCapabilitiesClaimEverything(t *testing.T) {
	c := memory.New(memory.Options{}).Capabilities()
	if !(c.ConsumerGroups && c.FanOut && c.PerKeyOrdering && c.CrashRedelivery && c.DelayedNack && c.AttemptCount && c.DeadLetter) {
		t.Fatalf("capabilities %+v", c)
	}
}

func TestInvalidSubscriberOptions(t *testing.T) {
	b := newBroker(t, memory.Options{})
	for _, o := range []broker.SubscriberOptions{{}, {Topic: "t", MaxAttempts: -1}, {Topic: "t", AckTimeout: -1}} {
		if _, err := b.NewSubscriber(bg, o); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("NewSubscriber(%+v) = %v", o, err)
		}
	}
	if err := newPub(t, b).Publish(bg, "", msgs("", "1")...); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("Publish to no topic = %v", err)
	}
}

func TestPrefetchBoundsUnsettled(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", Prefetch: 2})
	publish(t, newPub(t, b), "t", msgs("", "1", "2", "3")...)
	buf := make([]*broker.Delivery, 3)
	n, err := sub.ReceiveBatch(bg, buf)
	if err != nil || n != 2 {
		t.Fatalf("ReceiveBatch = %d, %v; want 2 (prefetch)", n, err)
	}
	noRecv(t, sub, 20*time.Millisecond)
	got := make(chan *broker.Delivery, 1)
	go func() { d, _ := sub.Receive(bg); got <- d }()
	mustAck(t, buf[0])
	if d := <-got; d == nil || d.Message().ID != "3" {
		t.Fatalf("after an ack, got %v", d)
	}
}

func TestBackpressureAcrossGroups(t *testing.T) {
	b := newBroker(t, memory.Options{Buffer: 2})
	fast := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "fast"})
	slow := newSub(t, b, broker.SubscriberOptions{Topic: "t", Group: "slow"})
	pub := newPub(t, b)
	publish(t, pub, "t", msgs("", "1", "2")...)
	for range 2 {
		mustAck(t, recv(t, fast))
	}
	// fast has room, slow has none: the publish waits for slow.
	done := make(chan error, 1)
	go func() { done <- pub.Publish(bg, "t", msgs("", "3", "4")...) }()
	d := recv(t, slow)
	select {
	case err := <-done:
		t.Fatalf("Publish returned (%v) while group slow was full", err)
	case <-time.After(20 * time.Millisecond):
	}
	mustAck(t, d)
	mustAck(t, recv(t, slow))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, s := range []*broker.Subscriber{fast, slow} {
		for _, want := range []string{"3", "4"} {
			if d := recv(t, s); d.Message().ID != want {
				t.Fatalf("got %s, want %s", d.Message().ID, want)
			} else {
				mustAck(t, d)
			}
		}
	}
}

func TestAckAfterBrokerClose(t *testing.T) {
	b := broker.New(memory.New(memory.Options{}))
	sub, _ := b.NewSubscriber(bg, broker.SubscriberOptions{Topic: "t"})
	pub, _ := b.NewPublisher(bg)
	publish(t, pub, "t", msgs("", "1", "2")...)
	d1, d2 := recv(t, sub), recv(t, sub)
	b.Close(bg)
	if err := d1.Ack(bg); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Ack after Close = %v", err)
	}
	if err := d2.Nack(bg, 0); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Nack after Close = %v", err)
	}
}

// TestStress mixes competing subscribers that ack, nack with and without
// delay, and "crash" (drop deliveries unsettled, left to the ack timeout),
// over keyed messages published concurrently, with a small buffer so that
// publishers wait. Nothing may be lost and no key may be reordered.
func TestStress(t *testing.T) {
	b := newBroker(t, memory.Options{Buffer: 64})
	l := conformance.NewLedger()
	const publishers, perPublisher, keys = 4, 500, 16
	total := publishers * perPublisher
	done := newCountdown(total)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 3 {
		sub := newSub(t, b, broker.SubscriberOptions{Topic: "t", AckTimeout: 20 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]*broker.Delivery, 1+i*4)
			for {
				n, err := sub.ReceiveBatch(ctx, buf)
				if err != nil {
					return
				}
				for _, d := range buf[:n] {
					m := d.Message()
					switch r := rand.IntN(20); {
					case r == 0 && m.Attempt < 4: // crash: never settled
					case r == 1 && m.Attempt < 4:
						d.Nack(ctx, 0)
					case r == 2 && m.Attempt < 4:
						d.Nack(ctx, time.Millisecond)
					default:
						l.Handled(m.ID) // handled, then acked
						switch err := d.Ack(ctx); {
						case err == nil:
							done.Hit()
						case errors.Is(err, memory.ErrExpired):
							// Too slow (a loaded machine): redelivered, handled again.
						default:
							t.Errorf("ack %s: %v", m.ID, err)
						}
					}
				}
			}
		}()
	}
	for p := range publishers {
		pub := newPub(t, b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perPublisher {
				// One publisher per key set, so publish order per key is defined.
				m := &broker.Message{ID: fmt.Sprintf("p%d-%d", p, i), Key: fmt.Sprintf("p%d-k%d", p, i%keys)}
				l.Published(m.ID, m.Key)
				if err := pub.Publish(ctx, "t", m); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
			}
		}()
	}
	waitFor(t, done.Done, "every message handled")
	cancel()
	wg.Wait()
	// Duplicates are at-least-once's right (an ack that came too late).
	if r := l.Report(); len(r.Lost) > 0 || len(r.Reordered) > 0 || len(r.Unexpected) > 0 || r.Handled != total {
		t.Fatalf("ledger: %v", r)
	}
	if st := depth(t, b, "t", "default"); st.Depth() != 0 || st.Acked != uint64(total) {
		t.Fatalf("stats: %+v", st)
	}
}
