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
	"github.com/queuekit/queuekit/broker/driver"
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
		if p := d.entry().rec.Partition; p == 0 || p == 1 && d.entry().offset() < 4 {
			_ = d.Ack(context.Background())
		}
	}
	waitCommitted(t, b, topic, "lag", 1, 4)
	waitCommitted(t, b, topic, "lag", 0, 10)
	lags, err := b.Lag(context.Background(), topic, "lag")
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

	// The same through broker.BacklogReporter, as the queuekit command reads it.
	var r driver.BacklogReporter = b
	bl, err := r.Backlog(context.Background(), topic, "lag")
	if err != nil || bl.Pending != 16 || bl.Consumers != 1 || len(bl.Parts) != 3 || bl.Parts[1].Pending != 6 || bl.Parts[1].Owner == "" {
		t.Errorf("Backlog = %+v, %v; want 16 pending over 3 parts, 1 consumer", bl, err)
	}
}

// TestBacklogOfGroupThatNeverCommitted: a group that never committed (nor
// joined) lags by the whole retained log — what it will read when it starts
// at the earliest offset — or by nothing under start=latest; it is not an
// error, through the driver or through broker.Broker.Backlog (what
// `queuekit lag` calls).
func TestBacklogOfGroupThatNeverCommitted(t *testing.T) {
	for _, start := range []StartOffset{Earliest, Latest} {
		t.Run(map[StartOffset]string{Earliest: "earliest", Latest: "latest"}[start], func(t *testing.T) {
			qb, kb := testQueuekit(t, Options{Partitions: 3, StartOffset: start})
			topic := newTopic(t)
			ctx := testCtx(t, 20*time.Second)
			if err := qb.Declare(ctx, topic, "workers"); err != nil {
				t.Fatal(err)
			}
			pub, _ := qb.NewPublisher(ctx)
			for p := 0; p < 3; p++ {
				if err := pub.Publish(ctx, topic, numbered(10, keyFor(p, 3))...); err != nil {
					t.Fatal(err)
				}
			}
			want := int64(30)
			if start == Latest {
				want = 0
			}
			bl, err := qb.Backlog(ctx, topic, "never-committed")
			if err != nil {
				t.Fatalf("Backlog of a group that never committed: %v", err)
			}
			if bl.Pending != want || bl.Consumers != 0 || len(bl.Parts) != 3 || bl.Parts[0].Pending != want/3 || bl.Parts[0].Owner != "" {
				t.Errorf("Backlog = %+v, want %d pending over 3 partitions and no consumer", bl, want)
			}
			lags, err := kb.Lag(ctx, topic, "never-committed")
			if err != nil || len(lags) != 3 || lags[1].Committed != -1 || lags[1].Lag != want/3 {
				t.Errorf("Lag = %+v, %v", lags, err)
			}
			if _, err := qb.Backlog(ctx, newTopic(t)+"-missing", "workers"); broker.KindOf(err) != semantics.NotFound {
				t.Errorf("Backlog of a missing topic: %v, want not found", err)
			}
		})
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
		rep, err = b.CheckBalance(context.Background(), topic, "idle", 0)
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
	rep, err := b.CheckBalance(context.Background(), hot, "nobody", 0)
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
	if rep, err := b.CheckBalance(context.Background(), even, "nobody", 0); err != nil || len(rep.Problems) != 0 {
		t.Errorf("an even topic with no members: %+v, %v", rep, err)
	}
}
