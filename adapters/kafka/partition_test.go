package kafka

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// perPartition counts the records of topic per partition (end minus start
// offset).
func perPartition(t *testing.T, b *Broker, topic string) []int64 {
	t.Helper()
	ctx := testCtx(t, 10*time.Second)
	starts, err := b.Admin().ListStartOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	ends, err := b.Admin().ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	counts := make([]int64, len(ends[topic]))
	for p, e := range ends[topic] {
		s, _ := starts.Lookup(topic, p)
		counts[p] = e.Offset - s.Offset
	}
	return counts
}

// TestKeylessMessagesSpread publishes 1,000 keyless messages one by one and
// 1,000 in one batch to 3-partition topics: each partition gets its share
// (kgo's default partitioner put all of them on one partition), while keyed
// messages stay on their murmur2 partition.
func TestKeylessMessagesSpread(t *testing.T) {
	const n, parts = 1000, 3
	b := testBroker(t, Options{Partitions: parts})
	oneByOne, batch := newTopic(t), newTopic(t)+"-batch"
	pub, _ := b.NewPublisher(context.Background())
	ctx := testCtx(t, 60*time.Second)
	for _, m := range numbered(n, "") {
		if err := pub.Publish(ctx, oneByOne, m); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, b, batch, numbered(n, "")...)
	for _, topic := range []string{oneByOne, batch} {
		counts := perPartition(t, b, topic)
		for p, c := range counts {
			if c < n/parts/2 {
				t.Errorf("%s: %d keyless messages on partition %d of %d (%v): not spread", topic, c, p, parts, counts)
			}
		}
	}

	keyed := newTopic(t) + "-keyed"
	publish(t, b, keyed, numbered(50, "customer-7")...)
	counts := perPartition(t, b, keyed)
	if counts[Partition("customer-7", parts)] != 50 {
		t.Errorf("keyed messages: %v, want all 50 on partition %d", counts, Partition("customer-7", parts))
	}
}

// TestCheckBalanceReportsKeylessSkew: every message of a 2-partition topic
// on one partition (what unspread keyless publishing did) is reported, with
// the empty partition named.
func TestCheckBalanceReportsKeylessSkew(t *testing.T) {
	b := testBroker(t, Options{})
	topic := newTopic(t)
	if err := b.CreateTopic(context.Background(), TopicSpec{Name: topic, Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(append(b.producerOpts(), kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	recs := make([]*kgo.Record, 100)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Partition: 0, Value: []byte(fmt.Sprint(i))}
	}
	if err := cl.ProduceSync(testCtx(t, 15*time.Second), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	rep, err := b.CheckBalance(context.Background(), topic, "nobody", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Starved) != 1 || rep.Starved[0] != 1 || !strings.Contains(strings.Join(rep.Problems, ";"), "partition 1 holds 0 of 100") {
		t.Fatalf("report %+v: want partition 1 reported as starved", rep)
	}

}
