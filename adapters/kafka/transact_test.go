package kafka

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// scan reads topic from the start to its end offsets with the given
// isolation and counts the data records per queuekit ID (control records,
// which mark transaction ends, are skipped but move the position).
func scan(t *testing.T, b *Broker, topic string, level kgo.IsolationLevel) (perID map[string]int, records int) {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	ends, err := b.Admin().ListEndOffsets(ctx, topic)
	if err != nil || ends.Error() != nil {
		t.Fatalf("ListEndOffsets: %v %v", err, ends.Error())
	}
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[o.Partition] = o.Offset
		}
	})
	cl, err := kgo.NewClient(kgo.SeedBrokers(testenv.Kafka(t)...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(level), kgo.KeepControlRecords(),
		kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	perID = map[string]int{}
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("scanning %s: still waiting for partitions %v", topic, left)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if end, ok := left[r.Partition]; ok && r.Offset+1 >= end {
				delete(left, r.Partition)
			}
			if r.Attrs.IsControl() {
				return
			}
			var m broker.Message
			decodeRecord(r, &m, false)
			perID[m.ID]++
			records++
		})
	}
	return perID, records
}

// TestExactlyOnceSurvivesKill runs the transactional processor in a child
// process and kills it (SIGKILL) in the middle of a transaction that has
// already written outputs. A new processor with the same transactional ID
// takes over; the read_committed output then holds every input exactly once,
// while a read_uncommitted scan shows the aborted outputs of the killed
// transaction: what a non-transactional pipeline would have duplicated.
func TestExactlyOnceSurvivesKill(t *testing.T) {
	seeds := testenv.Kafka(t)
	b := testBroker(t, Options{Partitions: 3})
	in, out := newTopic(t), newTopic(t)+"-out"
	if err := b.EnsureTopic(context.Background(), out); err != nil {
		t.Fatal(err)
	}
	const n, stopAfter = 200, 50
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{ID: fmt.Sprintf("in-%03d", i), Key: fmt.Sprint("k", i%7), Payload: []byte(fmt.Sprint(i))}
	}
	publish(t, b, in, msgs...)
	cfg := childConfig{seeds: seeds, in: in, out: out, group: "eos", stopAfter: stopAfter, transactionalID: "eos-" + in}
	child, lines := startChild(t, "eos", cfg)
	untilMidstream(t, lines)
	// The child is blocked inside a transaction; wait until the outputs of
	// every input it handled, committed or not, are in the log.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, recs := scan(t, b, out, kgo.ReadUncommitted()); recs >= stopAfter {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the child's outputs never reached the log")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = child.Process.Kill()
	_ = child.Wait()

	p, err := b.NewProcessor(context.Background(), ProcessorOptions{Topic: in, Group: "eos", TransactionalID: cfg.transactionalID, MaxBatch: 20})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() {
		runErr <- p.Run(ctx, func(_ context.Context, m *broker.Message) ([]*broker.Message, error) {
			return []*broker.Message{{ID: m.ID, Key: m.Key, Payload: m.Payload, Topic: out}}, nil
		})
	}()
	waitNoLag(t, b, in, "eos")
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}

	committed, _ := scan(t, b, out, kgo.ReadCommitted())
	for _, m := range msgs {
		if c := committed[m.ID]; c != 1 {
			t.Errorf("%s appears %d times in the read_committed output, want exactly once", m.ID, c)
		}
	}
	if len(committed) != n {
		t.Errorf("read_committed output holds %d distinct IDs, want %d", len(committed), n)
	}
	_, all := scan(t, b, out, kgo.ReadUncommitted())
	if all <= n {
		t.Fatalf("read_uncommitted holds %d records, want more than %d: the kill did not interrupt a transaction with outputs, so the test proved nothing", all, n)
	}
	t.Logf("read_committed: %d inputs once each; read_uncommitted: %d records (%d from the aborted transaction)", n, all, all-n)
}

// TestProcessorAbortsOnTransformError: a failing transform aborts the
// transaction, Run returns the error, and the next Run processes the batch
// again without duplicating the outputs that were aborted.
func TestProcessorAbortsOnTransformError(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	in, out := newTopic(t), newTopic(t)+"-out"
	publish(t, b, in, numbered(10, "")...)
	p, err := b.NewProcessor(context.Background(), ProcessorOptions{Topic: in, Group: "g", TransactionalID: "tx-" + in})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	boom := errors.New("boom")
	calls := 0
	err = p.Run(testCtx(t, 20*time.Second), func(_ context.Context, m *broker.Message) ([]*broker.Message, error) {
		if calls++; string(m.Payload) == "7" {
			return nil, boom
		}
		return []*broker.Message{{ID: m.ID, Payload: m.Payload, Topic: out}}, nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Run returned %v, want the transform's error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() {
		err := p.Run(ctx, func(_ context.Context, m *broker.Message) ([]*broker.Message, error) {
			return []*broker.Message{{ID: m.ID, Payload: m.Payload, Topic: out}}, nil
		})
		runErr <- err
	}()
	waitNoLag(t, b, in, "g")
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	perID, recs := scan(t, b, out, kgo.ReadCommitted())
	if recs != 10 || len(perID) != 10 {
		t.Fatalf("read_committed output: %d records, %d IDs, want 10 and 10", recs, len(perID))
	}
	if _, err := b.NewProcessor(context.Background(), ProcessorOptions{Topic: in}); err == nil {
		t.Error("NewProcessor without Group and TransactionalID succeeded")
	}
}

// waitNoLag polls until group has committed every record of topic.
func waitNoLag(t *testing.T, b *Broker, topic, group string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		lags, err := b.Lag(context.Background(), topic, group)
		if err != nil {
			t.Fatal(err)
		}
		var total int64
		for _, l := range lags {
			total += l.Lag
		}
		if total == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s still lags %d records behind on %s", group, total, topic)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
