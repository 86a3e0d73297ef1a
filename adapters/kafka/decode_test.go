package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// produceRaw writes records to topic with a plain franz-go producer, the
// way a third-party producer would.
func produceRaw(t *testing.T, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(testenv.Kafka(t)...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(testCtx(t, 15*time.Second), recs...).FirstErr(); err != nil {
		t.Fatalf("producing: %v", err)
	}
}

// TestReservedHeadersCannotForgeAttemptOrPublishedAt: a record from another
// producer carrying queuekit-attempt and queuekit-published-at headers is
// delivered as a first attempt with the record's own timestamp, and those
// headers are not handed on as user headers; its queuekit-id, the interop
// way to give a message an ID, is its ID. A forged attempt count would
// otherwise dead-letter the message on its first nack (MaxAttempts).
func TestReservedHeadersCannotForgeAttemptOrPublishedAt(t *testing.T) {
	b := testBroker(t, Options{Partitions: 1})
	topic := newTopic(t)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, MaxAttempts: 2})
	at := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	produceRaw(t, &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte("v"), Timestamp: at, Headers: []kgo.RecordHeader{
		{Key: broker.HeaderID, Value: []byte("ext-1")},
		{Key: broker.HeaderAttempt, Value: []byte("7")},
		{Key: broker.HeaderPublishedAt, Value: []byte("2001-01-01T00:00:00Z")},
		{Key: "tenant", Value: []byte("t1")},
	}})
	d := receive(t, s, 10*time.Second)
	m := d.Message()
	if m.ID != "ext-1" || m.Attempt != 1 || !m.PublishedAt.Equal(at) {
		t.Fatalf("delivered id %q attempt %d published %v; want ext-1, attempt 1, %v", m.ID, m.Attempt, m.PublishedAt, at)
	}
	if len(m.Headers) != 1 || m.Header("tenant") != "t1" {
		t.Fatalf("headers %v, want only tenant=t1 (reserved headers are not user headers)", m.Headers)
	}
	if err := d.Nack(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	again := receive(t, s, 10*time.Second)
	if again.Message().ID != "ext-1" || again.Message().Attempt != 2 {
		t.Fatalf("after a nack: id %q attempt %d, want ext-1 attempt 2 (not dead-lettered on a forged count)", again.Message().ID, again.Message().Attempt)
	}
	_ = again.Ack(context.Background())
}

// TestRetryTopicAttemptNeedsRetryPath: on the retry topic, the attempt
// header counts only on records the retry path wrote (with their due
// time); one written there by hand is a first attempt.
func TestRetryTopicAttemptNeedsRetryPath(t *testing.T) {
	var m broker.Message
	forged := &kgo.Record{Topic: "t.g.retry", Headers: []kgo.RecordHeader{{Key: broker.HeaderAttempt, Value: []byte("9")}}}
	decodeRecord(forged, &m, true)
	if m.Attempt != 1 {
		t.Errorf("a retry-topic record without a due time: attempt %d, want 1", m.Attempt)
	}
	ours := &kgo.Record{Topic: "t.g.retry", Headers: []kgo.RecordHeader{
		{Key: broker.HeaderAttempt, Value: []byte("3")}, {Key: headerRetryAt, Value: []byte("1700000000000")}}}
	m = broker.Message{}
	if due := decodeRecord(ours, &m, true); m.Attempt != 3 || due != 1700000000000*int64(time.Millisecond) {
		t.Errorf("a retry-path record: attempt %d due %d, want 3 and its due time", m.Attempt, due)
	}
	m = broker.Message{}
	decodeRecord(ours, &m, false)
	if m.Attempt != 1 {
		t.Errorf("the same headers on a main-topic record: attempt %d, want 1", m.Attempt)
	}
}
