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
		if p := d.e.rec.Partition; d.e.off == 0 {
			held[p] = d
			continue
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for p := int32(0); p < 2; p++ {
		waitCommitted(t, b, "g", topic, p, 0)
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
	moved := first.e.rec.Partition
	if first.e.off != 0 || payloadOf(first) != "0" || first.Message().Attempt != 2 {
		t.Fatalf("the new owner of partition %d started at offset %d (%q, attempt %d): want offset 0, the message in flight, attempt 2",
			moved, first.e.off, payloadOf(first), first.Message().Attempt)
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
		if d.e.rec.Partition != moved || d.e.off != off {
			t.Fatalf("got %d/%d, want %d/%d", d.e.rec.Partition, d.e.off, moved, off)
		}
		_ = d.Ack(context.Background())
	}
	waitCommitted(t, b, "g", topic, moved, 10)
	waitCommitted(t, b, "g", topic, 1-moved, 10)
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
	waitCommitted(t, b, "g", topic, moved, 10)
	publish(t, b, topic, &broker.Message{Key: keyFor(int(moved), 2), Payload: []byte("marker")})
	d := receive(t, sub2, 20*time.Second).(*delivery)
	if d.e.rec.Partition != moved || payloadOf(d) != "marker" {
		t.Fatalf("the new owner got %d/%d %q, want only the marker: the drained message was acked", d.e.rec.Partition, d.e.off, payloadOf(d))
	}
	_ = d.Ack(context.Background())
	_ = held[1-moved].Ack(context.Background())
}
