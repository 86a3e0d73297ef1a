package kafka

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// TestCompactedTopicKeepsNewestPerKeyAndTombstones publishes to a compacted
// topic, has the broker compact it, and reads it back: the newest record of
// each key survives, and a tombstone (nil payload) arrives as a nil payload.
func TestCompactedTopicKeepsNewestPerKeyAndTombstones(t *testing.T) {
	cluster := testenv.KafkaCluster(t)
	if cluster == nil {
		t.Skip("compaction is triggered through the in-process kfake cluster; QUEUEKIT_KAFKA_BROKERS points elsewhere")
	}
	b := testBroker(t, Options{})
	topic := newTopic(t)
	err := b.CreateTopic(context.Background(), TopicSpec{Name: topic, Partitions: 1, Configs: map[string]string{"cleanup.policy": "compact"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CreateTopic(context.Background(), TopicSpec{Name: topic}); !errors.Is(err, kerr.TopicAlreadyExists) {
		t.Errorf("creating it again: %v, want TopicAlreadyExists", err)
	}
	// One Publish per record: each is its own batch, and compaction keeps
	// the newest batch whole.
	for _, kv := range []struct {
		k string
		v []byte
	}{{"a", []byte("a1")}, {"b", []byte("b1")}, {"a", []byte("a2")}, {"b", nil}, {"c", []byte("c1")}, {"last", []byte("x")}} {
		publish(t, b, topic, &broker.Message{Key: kv.k, Payload: kv.v})
	}
	cluster.Compact()
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic})
	var got []string
	for range 4 {
		d := receive(t, s, 10*time.Second)
		m := d.Message()
		v := string(m.Payload)
		if m.Payload == nil {
			v = "<tombstone>"
		}
		got = append(got, m.Key+"="+v)
		_ = d.Ack(context.Background())
	}
	if want := "a=a2 b=<tombstone> c=c1 last=x"; strings.Join(got, " ") != want {
		t.Fatalf("after compaction: %s, want %s", strings.Join(got, " "), want)
	}
}

func TestLagPerPartition(t *testing.T) {
	b := testBroker(t, Options{Partitions: 3, CommitInterval: 20 * time.Millisecond})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "lag"})
	for p := 0; p < 3; p++ {
		publish(t, b, topic, numbered(10, keyFor(p, 3))...)
	}
	// Ack all of partition 0 and the first 4 of partition 1.
	for range 30 {
		d := receive(t, s, 10*time.Second).(*delivery)
		if p := d.e.rec.Partition; p == 0 || p == 1 && d.e.off < 4 {
			_ = d.Ack(context.Background())
		}
	}
	waitCommitted(t, b, "lag", topic, 1, 4)
	waitCommitted(t, b, "lag", topic, 0, 10)
	lags, err := b.Lag(context.Background(), "lag", topic)
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{0, 6, 10}
	for p, l := range lags {
		if l.Partition != int32(p) || l.End != 10 || l.Lag != want[p] || l.Member == "" {
			t.Errorf("partition %d: %+v, want lag %d, end 10 and a member", p, l, want[p])
		}
	}
	if lags[2].Committed != 0 {
		t.Errorf("partition 2 committed %d, want 0 (its first message is in flight)", lags[2].Committed)
	}
	none, err := b.Lag(context.Background(), "never-joined", topic)
	if err != nil || none[0].Committed != -1 || none[0].Lag != 10 || none[0].Member != "" {
		t.Errorf("lag of a group that never joined: %+v, %v", none, err)
	}

	// The same through broker.BacklogReporter, as the queuekit command reads it.
	var r broker.BacklogReporter = b
	bl, err := r.Backlog(context.Background(), topic, "lag")
	if err != nil || bl.Pending != 16 || bl.Consumers != 1 || len(bl.Parts) != 3 || bl.Parts[1].Pending != 6 || bl.Parts[1].Owner == "" {
		t.Errorf("Backlog = %+v, %v; want 16 pending over 3 parts, 1 consumer", bl, err)
	}
	if _, err := r.Backlog(context.Background(), topic, "never-joined"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Backlog of a group that never joined: %v, want not found", err)
	}
}

func TestCheckBalanceFindsIdleMembersAndHotPartitions(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	topic := newTopic(t)
	subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "idle"})
	subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "idle"})
	var rep *BalanceReport
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		rep, err = b.CheckBalance(context.Background(), "idle", topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Members == 2 && len(rep.Assigned) == 2 && len(rep.IdleMembers) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group never settled with 2 members: %+v", rep)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(rep.Problems) == 0 || !strings.Contains(rep.Problems[0], "idle") {
		t.Errorf("problems %q do not name the idle member", rep.Problems)
	}

	hot := newTopic(t)
	if err := b.CreateTopic(context.Background(), TopicSpec{Name: hot, Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	msgs := numbered(60, "customer-42") // a hot key
	for i := 0; i < 12; i++ {
		msgs = append(msgs, &broker.Message{Key: fmt.Sprint("k", i)})
	}
	publish(t, b, hot, msgs...)
	rep, err := b.CheckBalance(context.Background(), "nobody", hot, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Skewed) != 1 || int(rep.Skewed[0]) != Partition("customer-42", 4) {
		t.Fatalf("skewed %v, want [%d] (messages per partition %v)", rep.Skewed, Partition("customer-42", 4), rep.Messages)
	}
	if !strings.Contains(strings.Join(rep.Problems, ";"), "hot key") {
		t.Errorf("problems %q", rep.Problems)
	}
	even := newTopic(t)
	ev := make([]*broker.Message, 0, 40)
	for p := 0; p < 4; p++ {
		ev = append(ev, numbered(10, keyFor(p, 4))...)
	}
	if err := b.CreateTopic(context.Background(), TopicSpec{Name: even, Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, even, ev...)
	if rep, err := b.CheckBalance(context.Background(), "nobody", even, 0); err != nil || len(rep.Problems) != 0 {
		t.Errorf("an even topic with no members: %+v, %v", rep, err)
	}
}
