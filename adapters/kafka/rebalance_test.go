package kafka

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// keyFor returns a key that murmur2 puts on partition part of n.
func keyFor(part, n int) string {
	for i := 0; ; i++ {
		if k := fmt.Sprint("key-", i); Partition(k, n) == part {
			return k
		}
	}
}

// rebalanceSetup makes sub1 the only member of group g on a 2-partition
// topic holding 10 messages per partition, receives all 20, acks every one
// but the first of each partition, and returns those two deliveries.
func rebalanceSetup(t *testing.T, drain time.Duration) (*Broker, string, *Subscriber, [2]*delivery) {
	b := testBroker(t, Options{Partitions: 2, DrainTimeout: drain, CommitInterval: 50 * time.Millisecond})
	topic := newTopic(t)
	sub1 := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	for p := 0; p < 2; p++ {
		publish(t, b, topic, numbered(10, keyFor(p, 2))...)
	}
	var held [2]*delivery
	for range 20 {
		d := receive(t, sub1, 10*time.Second).(*delivery)
		if p := d.entry().rec.Partition; d.entry().offset() == 0 {
			held[p] = d
			continue
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for p := int32(0); p < 2; p++ {
		waitCommitted(t, b, topic, "g", p, 0)
	}
	return b, topic, sub1, held
}

// TestRebalanceNeverCommitsPastInFlight: a second member joins while the
// first holds one un-acked delivery per partition. The partition that moves
// is given up at offset 0 after the drain timeout, so the new owner starts
// with the un-acked message (attempt 2), and the late ack fails.
func TestRebalanceNeverCommitsPastInFlight(t *testing.T) {
	b, topic, _, held := rebalanceSetup(t, 300*time.Millisecond)
	sub2 := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	first := receive(t, sub2, 20*time.Second).(*delivery)
	moved := first.entry().rec.Partition
	if first.entry().offset() != 0 || payloadOf(first) != "0" || first.Message().Attempt != 2 {
		t.Fatalf("the new owner of partition %d started at offset %d (%q, attempt %d): want offset 0, the message in flight, attempt 2",
			moved, first.entry().offset(), payloadOf(first), first.Message().Attempt)
	}
	if err := held[moved].Ack(context.Background()); err == nil || broker.KindOf(err) != semantics.Transient {
		t.Errorf("ack of a delivery whose partition was revoked: %v, want a transient error", err)
	}
	if err := held[1-moved].Ack(context.Background()); err != nil {
		t.Errorf("ack on the partition that stayed: %v", err)
	}
	// The moved partition is redelivered from the watermark: offsets 1..9
	// again (at-least-once), in order.
	_ = first.Ack(context.Background())
	for off := int64(1); off < 10; off++ {
		d := receive(t, sub2, 10*time.Second).(*delivery)
		if d.entry().rec.Partition != moved || d.entry().offset() != off {
			t.Fatalf("got %d/%d, want %d/%d", d.entry().rec.Partition, d.entry().offset(), moved, off)
		}
		_ = d.Ack(context.Background())
	}
	waitCommitted(t, b, topic, "g", moved, 10)
	waitCommitted(t, b, topic, "g", 1-moved, 10)
}

// TestRebalanceDrainsInFlight: the in-flight delivery of the partition being
// revoked is acked during the drain, so the revoke commits past it and the
// new owner never sees it.
func TestRebalanceDrainsInFlight(t *testing.T) {
	b, topic, _, held := rebalanceSetup(t, 10*time.Second)
	sub2 := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	deadline := time.Now().Add(20 * time.Second)
	moved := int32(-1)
	for moved < 0 {
		for p, d := range held {
			d.p.mu.Lock()
			if d.p.revoking {
				moved = int32(p)
			}
			d.p.mu.Unlock()
		}
		if time.Now().After(deadline) {
			t.Fatal("no partition was revoked after a second member joined")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := held[moved].Ack(context.Background()); err != nil {
		t.Fatalf("ack during the drain: %v", err)
	}
	waitCommitted(t, b, topic, "g", moved, 10)
	publish(t, b, topic, &broker.Message{Key: keyFor(int(moved), 2), Payload: []byte("marker")})
	d := receive(t, sub2, 20*time.Second).(*delivery)
	if d.entry().rec.Partition != moved || payloadOf(d) != "marker" {
		t.Fatalf("the new owner got %d/%d %q, want only the marker: the drained message was acked", d.entry().rec.Partition, d.entry().offset(), payloadOf(d))
	}
	_ = d.Ack(context.Background())
	_ = held[1-moved].Ack(context.Background())
}

// TestRebalanceDropsUndeliveredBacklog: the subscriber polls whole fetches
// but, with Prefetch 1, delivers one record at a time; the records of a
// partition that moves to a second member while they wait undelivered are
// dropped, never tracked or committed: the new owner gets them from the
// last commit, and every record is handled exactly once, in order per
// partition, by the member that owns its partition (the first member
// receives nothing while the partition moves).
func TestRebalanceDropsUndeliveredBacklog(t *testing.T) {
	b := testBroker(t, Options{Partitions: 2, CommitInterval: 50 * time.Millisecond})
	topic := newTopic(t)
	if err := b.Declare(context.Background(), topic, []string{"g"}); err != nil {
		t.Fatal(err)
	}
	for p := 0; p < 2; p++ {
		publish(t, b, topic, numbered(10, keyFor(p, 2))...)
	}
	sub1 := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 1})
	first := receive(t, sub1, 10*time.Second).(*delivery)
	if err := first.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	sub2 := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})

	type handled struct {
		sub       int
		part      int32
		off       int64
		marker    bool
		ackFailed bool
	}
	got := make(chan handled, 64)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	consume := func(i int, s *Subscriber) {
		for {
			d, err := s.Receive(ctx)
			if err != nil {
				return
			}
			dd := d.(*delivery)
			got <- handled{i, dd.entry().rec.Partition, dd.entry().offset(), payloadOf(d) == "marker", d.Ack(context.Background()) != nil}
		}
	}
	// sub1 receives again only once sub2 got a partition: meanwhile its
	// backlog holds the rest of the fetch, the moved partition's too.
	go consume(2, sub2)
	seen := map[[2]int64]bool{{int64(first.entry().rec.Partition), first.entry().offset()}: true}
	next := map[int32]int64{}
	owner := map[int32]int{}
	// Once all 20 are handled, a marker per partition: anything sub1 kept
	// of the moved partition would come before its own partition's marker.
	markers := 0
	for markers < 2 {
		if len(seen) == 20 {
			for p := 0; p < 2; p++ {
				publish(t, b, topic, &broker.Message{Key: keyFor(p, 2), Payload: []byte("marker")})
			}
			seen[[2]int64{-1, -1}] = true
		}
		var h handled
		select {
		case h = <-got:
		case <-ctx.Done():
			t.Fatalf("%d of 20 records and %d of 2 markers handled: %v", min(len(seen), 20), markers, seen)
		}
		if h.marker {
			markers++
		}
		if len(owner) == 0 {
			go consume(1, sub1)
		}
		k := [2]int64{int64(h.part), h.off}
		if seen[k] {
			t.Fatalf("subscriber %d handled %d/%d again", h.sub, h.part, h.off)
		}
		seen[k] = true
		if h.ackFailed {
			t.Errorf("subscriber %d could not ack %d/%d", h.sub, h.part, h.off)
		}
		if o := owner[h.part]; o != 0 && o != h.sub {
			t.Fatalf("subscriber %d delivered %d/%d, a partition of subscriber %d", h.sub, h.part, h.off, o)
		}
		owner[h.part] = h.sub
		if n, ok := next[h.part]; ok && h.off < n {
			t.Fatalf("%d/%d handled after %d/%d", h.part, h.off, h.part, n-1)
		}
		next[h.part] = h.off + 1
	}
	if owner[0] == owner[1] {
		t.Errorf("both partitions ended with subscriber %d: no partition moved", owner[0])
	}
}
