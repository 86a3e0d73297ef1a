package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

func payloadOf(d driver.Delivery) string { return string(d.Message().Payload) }

// TestCommitsOnlyUpToLowestUnacked acks every message of a partition but
// one: the committed offset stops at that one until it is acked.
func TestCommitsOnlyUpToLowestUnacked(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1, CommitInterval: 20 * time.Millisecond})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	publish(t, b, topic, numbered(10, "")...)
	var held driver.Delivery
	for i := 0; i < 10; i++ {
		d := receive(t, s, 10*time.Second)
		if payloadOf(d) == "3" {
			held = d
			continue
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	waitCommitted(t, b, topic, "g", 0, 3)
	// Still 3 after more commit rounds: never past the message in flight.
	if err := s.commit(context.Background(), s.partitions(), false); err != nil {
		t.Fatal(err)
	}
	if got := committed(t, b, topic, "g", 0); got != 3 {
		t.Fatalf("committed %d while offset 3 is in flight", got)
	}
	if err := held.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitCommitted(t, b, topic, "g", 0, 10)
}

// TestNackPauseKeepsOrder nacks the first message of a partition with a
// delay: it comes back after the delay, and before every later message of
// its partition, which were fetched already.
func TestNackPauseKeepsOrder(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic})
	publish(t, b, topic, numbered(5, "k")...)
	first := receive(t, s, 10*time.Second)
	if payloadOf(first) != "0" {
		t.Fatalf("first delivery %q", payloadOf(first))
	}
	const delay = 300 * time.Millisecond
	nacked := time.Now()
	if err := first.Nack(context.Background(), delay); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		d := receive(t, s, 10*time.Second)
		wantAttempt := 1
		if i == 0 {
			wantAttempt = 2
			if waited := time.Since(nacked); waited < delay {
				t.Errorf("redelivered after %v, before the %v delay", waited, delay)
			}
		}
		if payloadOf(d) != strconv.Itoa(i) || d.Message().Attempt != wantAttempt {
			t.Fatalf("delivery %d: payload %q attempt %d, want %d attempt %d (partition order must hold across a nack)",
				i, payloadOf(d), d.Message().Attempt, i, wantAttempt)
		}
		_ = d.Ack(context.Background())
	}
}

// TestNackRetryTopic: the nacked message goes to the group's retry topic and
// comes back after the delay without holding up the partition; its attempt
// count survives a crash.
func TestNackRetryTopic(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1, Nack: NackRetryTopic})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "billing"})
	if s.retryTopic != topic+".billing.retry" {
		t.Errorf("retry topic %q", s.retryTopic)
	}
	publish(t, b, topic, numbered(3, "k")...)
	first := receive(t, s, 10*time.Second)
	const delay = time.Second
	nacked := time.Now()
	if err := first.Nack(context.Background(), delay); err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	for _, want := range []string{"1", "2"} {
		d := receive(t, s, 10*time.Second)
		if payloadOf(d) != want {
			t.Fatalf("got %q, want %q: the partition must keep flowing", payloadOf(d), want)
		}
		if time.Since(returned) >= delay {
			t.Errorf("message %s waited for the nacked one's delay", want)
		}
		_ = d.Ack(context.Background())
	}
	again := receive(t, s, 10*time.Second)
	m := again.Message()
	if payloadOf(again) != "0" || m.Attempt != 2 || m.ID != first.Message().ID || m.Topic != topic || m.Key != "k" {
		t.Fatalf("retry: payload %q attempt %d id %s topic %s key %q", m.Payload, m.Attempt, m.ID, m.Topic, m.Key)
	}
	if waited := time.Since(nacked); waited < delay {
		t.Errorf("retried after %v, before the %v delay", waited, delay)
	}
	for k := range m.Headers {
		t.Errorf("internal header %q leaked into the retried message", k)
	}
	// Crash while holding the retry: the next member sees attempt 3.
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s2 := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "billing"})
	d := receive(t, s2, 10*time.Second)
	if payloadOf(d) != "0" || d.Message().Attempt != 3 {
		t.Fatalf("after the crash: payload %q attempt %d, want \"0\" attempt 3", payloadOf(d), d.Message().Attempt)
	}
	_ = d.Ack(context.Background())
}

// TestDeadLetterAfterMaxAttempts: the last failed attempt moves the message
// to <topic>.dlq with the reason headers, and it is not delivered again.
func TestDeadLetterAfterMaxAttempts(t *testing.T) {
	for _, strategy := range []NackStrategy{NackPause, NackRetryTopic} {
		t.Run(fmt.Sprint("strategy=", strategy), func(t *testing.T) {
			b := testBroker(t, Options{Partitions: 1, Nack: strategy})
			topic := newTopic(t)
			s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, MaxAttempts: 2})
			dead := subscribe(t, b, broker.SubscriberOptions{Topic: topic + ".dlq"})
			poison := &broker.Message{ID: "poison-1", Key: "k", Payload: []byte("bad"), Headers: map[string]string{"tenant": "t1"}}
			publish(t, b, topic, poison)
			for attempt := 1; attempt <= 2; attempt++ {
				d := receive(t, s, 10*time.Second)
				if d.Message().ID != "poison-1" || d.Message().Attempt != attempt {
					t.Fatalf("delivery %d: id %s attempt %d", attempt, d.Message().ID, d.Message().Attempt)
				}
				if err := d.Nack(context.Background(), 0); err != nil {
					t.Fatal(err)
				}
			}
			publish(t, b, topic, &broker.Message{ID: "marker", Key: "k"})
			if d := receive(t, s, 10*time.Second); d.Message().ID != "marker" {
				t.Fatalf("after MaxAttempts the main subscription delivered %s (attempt %d), want the marker", d.Message().ID, d.Message().Attempt)
			}
			dl := receive(t, dead, 10*time.Second)
			m := dl.Message()
			if m.ID != "poison-1" || string(m.Payload) != "bad" || m.Key != "k" || m.Header("tenant") != "t1" {
				t.Fatalf("dead letter: %+v", m)
			}
			for h, want := range map[string]string{
				broker.HeaderOriginalTopic: topic, broker.HeaderDeadAttempts: "2",
				HeaderOriginalPartition: "0", HeaderOriginalOffset: "0",
			} {
				if m.Header(h) != want {
					t.Errorf("dead letter header %s = %q, want %q", h, m.Header(h), want)
				}
			}
			if m.Header(broker.HeaderDeadReason) == "" || m.Header(broker.HeaderLastFailure) == "" {
				t.Errorf("dead letter lacks reason or time: %v", m.Headers)
			}
		})
	}
}

// TestAckTimeoutRedelivers: a delivery left unsettled past AckTimeout comes
// again; settling the expired one reports that it was settled for it.
func TestAckTimeoutRedelivers(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, AckTimeout: 200 * time.Millisecond})
	publish(t, b, topic, numbered(1, "")...)
	first := receive(t, s, 10*time.Second)
	handed := time.Now()
	second := receive(t, s, 10*time.Second)
	if second.Message().ID != first.Message().ID || second.Message().Attempt != 2 {
		t.Fatalf("second delivery: id %s attempt %d", second.Message().ID, second.Message().Attempt)
	}
	if waited := time.Since(handed); waited < 200*time.Millisecond {
		t.Errorf("redelivered after %v, before the ack timeout", waited)
	}
	if err := first.Ack(context.Background()); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Errorf("Ack of the expired delivery: %v, want ErrAlreadySettled", err)
	}
	if err := second.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestCrashRedeliversWithAttemptCount: a subscriber acks one message of
// three and closes; the next member of the group gets the other two, with
// Attempt 2 read from the commit metadata, and not the acked one.
func TestCrashRedeliversWithAttemptCount(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	publish(t, b, topic, numbered(3, "")...)
	var ds []driver.Delivery
	for range 3 {
		ds = append(ds, receive(t, s, 10*time.Second))
	}
	if err := ds[0].Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := ds[1].Ack(context.Background()); broker.KindOf(err) != semantics.Closed {
		t.Errorf("Ack after Close: %v, want a closed error", err)
	}
	s2 := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	for _, want := range []string{"1", "2"} {
		d := receive(t, s2, 10*time.Second)
		if payloadOf(d) != want || d.Message().Attempt != 2 {
			t.Fatalf("got %q attempt %d, want %q attempt 2", payloadOf(d), d.Message().Attempt, want)
		}
		_ = d.Ack(context.Background())
	}
}

// The watermark is the lowest unacknowledged offset across the runs a
// partition tracks, whatever order the acks come in, and the offset after
// the last record once every run is let go.
func TestTrackRunsWatermark(t *testing.T) {
	p := &partition{next: 30}
	var runs [][]delivery
	for _, offs := range [][]int64{{10, 11, 12}, {14}, {20, 21}} { // gaps: compacted or aborted records
		run := make([]delivery, len(offs))
		for i, off := range offs {
			run[i].ent.rec = &kgo.Record{Offset: off}
		}
		runs = append(runs, run)
		p.track = append(p.track, run)
	}
	ack := func(run, i int, want int64) {
		t.Helper()
		runs[run][i].ent.done = true
		p.advance()
		if got := p.watermark(); got != want {
			t.Fatalf("after acking %d: watermark %d, want %d", runs[run][i].ent.offset(), got, want)
		}
	}
	ack(0, 1, 10)
	ack(2, 0, 10)
	ack(0, 0, 12)
	ack(1, 0, 12)
	ack(0, 2, 21) // runs 0 and 1 let go at once
	if left := len(p.track) - p.t0; left != 1 {
		t.Fatalf("%d runs left, want the last one only", left)
	}
	ack(2, 1, 30)
	if len(p.track) != 0 {
		t.Fatalf("%d runs left after every ack", len(p.track))
	}
}

func TestAttemptsMetaRoundtrip(t *testing.T) {
	p := &partition{next: 20}
	var run []delivery // first deliveries
	mk := func(off int64, attempt int32, handed bool) {
		run = append(run, delivery{ent: entry{rec: &kgo.Record{Offset: off}, base: 1}})
		d := &run[len(run)-1]
		if off == 14 {
			d.ent.cur = &delivery{} // redelivered, not handed out yet
			d = d.ent.cur
		}
		d.attempt = attempt
		if handed {
			d.handed.Store(1)
		}
	}
	mk(10, 1, true)
	mk(11, 1, true)
	mk(12, 1, true)
	mk(13, 3, true)
	mk(14, 2, false)
	mk(15, 1, false)
	mk(16, 1, true)
	run[2].ent.done = true
	p.track = [][]delivery{run[:2], run[2:5], run[5:]} // runs
	meta := p.attemptsMeta()
	if meta != "qk1:10-11*1,13*3,14*1,16*1" {
		t.Fatalf("meta %q", meta)
	}
	got := parseAttemptsMeta(meta)
	want := map[int64]int{10: 1, 11: 1, 13: 3, 14: 1, 16: 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parsed %v, want %v", got, want)
	}
	for _, bad := range []string{"", "member-id", "qk1:", "qk1:x*1", "qk1:5-3*1", "qk1:1*0"} {
		if parseAttemptsMeta(bad) != nil {
			t.Errorf("parseAttemptsMeta(%q) accepted it", bad)
		}
	}
}

func TestReceiveAfterCloseAndSettleTwice(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic})
	publish(t, b, topic, numbered(1, "")...)
	d := receive(t, s, 10*time.Second)
	if err := d.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(context.Background()); err != nil {
		t.Errorf("second Ack: %v", err)
	}
	if err := d.Nack(context.Background(), 0); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Errorf("Nack after Ack: %v", err)
	}
	_ = s.Close(context.Background())
	if _, err := s.Receive(context.Background()); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Receive after Close: %v", err)
	}
}

// TestAtMostOnceAckIsCommittedWhenItReturns: a subscriber declared
// AtMostOnce (with the default one-second commit interval) has the offset
// committed by the time Ack returns, so a crash right after can never
// redeliver the message.
func TestAtMostOnceAckIsCommittedWhenItReturns(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	topic := newTopic(t)
	amo := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "amo", Guarantee: semantics.AtMostOnce})
	publish(t, b, topic, numbered(3, "")...)
	for i := int64(0); i < 3; i++ {
		if err := receive(t, amo, 10*time.Second).Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := committed(t, b, topic, "amo", 0); got != i+1 {
			t.Fatalf("after the at-most-once Ack of offset %d the committed offset is %d, want %d", i, got, i+1)
		}
	}
}

// TestHolderMayCountAttemptsInPlace: Consume retries a message in place
// under PerKey ordering, counting Message.Attempt up while the delivery is
// held; the adapter's committer, running meanwhile, must not read the
// holder's Message (go test -race caught it), and the Nack that follows
// must honour the holder's count: at MaxAttempts the message is
// dead-lettered with that count.
func TestHolderMayCountAttemptsInPlace(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1, CommitInterval: time.Millisecond})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, MaxAttempts: 4})
	dead := subscribe(t, b, broker.SubscriberOptions{Topic: topic + ".dlq"})
	publish(t, b, topic, numbered(2, "k")...)
	d := receive(t, s, 10*time.Second)
	_ = receive(t, s, 10*time.Second) // in flight: the committer has metadata to write
	m := d.Message()
	// Count up to 4 over at least 50ms, while the committer runs (a loop
	// bounded by time alone could stop short of 4 on a loaded machine:
	// then the Nack redelivers from memory and nothing is dead-lettered).
	for start := time.Now(); m.Attempt < 4 || time.Since(start) < 50*time.Millisecond; {
		if m.Attempt < 4 {
			m.Attempt++ // what retryInPlace does between handler runs
		}
		time.Sleep(time.Millisecond)
	}
	if err := d.Nack(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	dl := receive(t, dead, 10*time.Second)
	if dl.Message().ID != m.ID || dl.Message().Header(broker.HeaderDeadAttempts) != "4" {
		t.Fatalf("dead letter %s with %s=%q, want %s after 4 attempts", dl.Message().ID, broker.HeaderDeadAttempts, dl.Message().Header(broker.HeaderDeadAttempts), m.ID)
	}
}

// TestPrefetchBoundsDeliveries: the poller takes whole fetches from the
// client, but no more than Prefetch deliveries are handed out unsettled;
// settling one lets the next through, and every message comes in offset
// order.
func TestPrefetchBoundsDeliveries(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Prefetch: 5})
	publish(t, b, topic, numbered(50, "k")...)
	var held []driver.Delivery
	for i := 0; i < 5; i++ {
		held = append(held, receive(t, s, 10*time.Second))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if d, err := s.Receive(ctx); err == nil {
		t.Fatalf("a sixth delivery (%q) with Prefetch 5 and none settled", payloadOf(d))
	}
	s.mu.Lock()
	backlog := len(s.backlog)
	s.mu.Unlock()
	if got := s.outstanding.Load(); got != 5 || backlog == 0 {
		t.Errorf("outstanding %d, backlog %d entries: want 5, and the rest of the fetch waiting undecoded", got, backlog)
	}
	for _, d := range held {
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for i := 5; i < 50; i++ {
		d := receive(t, s, 10*time.Second)
		if got := payloadOf(d); got != strconv.Itoa(i) {
			t.Fatalf("message %d is %q", i, got)
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range held {
		if got := payloadOf(d); got != strconv.Itoa(i) {
			t.Errorf("message %d is %q", i, got)
		}
	}
}
