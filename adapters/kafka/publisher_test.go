package kafka

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Kafka's own vectors (UtilsTest.testMurmur2 in the Java client) and
// kafkajs' Java-compatible partitioner's (generated there with the Java
// code).
var murmur2Vectors = map[string]int32{
	"21":                         -973932308,
	"foobar":                     -790332482,
	"a-little-bit-long-string":   -985981536,
	"a-little-bit-longer-string": -1486304829,
	"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
	"abc":       479470107,
	"0":         971027396,
	"1":         -1993445489,
	"128":       -326012175,
	"2187":      -1508407203,
	"16384":     -325739742,
	"78125":     -1654490814,
	"279936":    1462227128,
	"823543":    -2014198330,
	"2097152":   607668903,
	"4782969":   -1182699775,
	"10000000":  -1830336757,
	"19487171":  -1603849305,
	"35831808":  -857013643,
	"62748517":  -1167431028,
	"105413504": -381294639,
	"170859375": -1658323481,
	"100:48069": 1009543857,
}

func TestMurmur2MatchesJavaAndKafkajs(t *testing.T) {
	for key, want := range murmur2Vectors {
		if got := int32(murmur2(key)); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", key, got, want)
		}
		// Partition with n = MaxInt32 exposes the masked 31-bit hash.
		if got, want := Partition(key, math.MaxInt32), int(uint32(want)&0x7fffffff)%math.MaxInt32; got != want {
			t.Errorf("Partition(%q, MaxInt32) = %d, want %d", key, got, want)
		}
	}
	if Partition("", 3) != -1 {
		t.Error("an empty key must have no fixed partition")
	}
}

// TestPublishedKeysLandOnMurmur2Partitions checks what the broker stored:
// every keyed message is on Partition(key, n), as a Java producer would
// have put it.
func TestPublishedKeysLandOnMurmur2Partitions(t *testing.T) {
	b := testBroker(t, Options{Partitions: 7})
	topic := newTopic(t)
	var msgs []*broker.Message
	for key := range murmur2Vectors {
		msgs = append(msgs, &broker.Message{Key: key, Payload: []byte(key)})
	}
	publish(t, b, topic, msgs...)
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	seen := map[int]bool{}
	for range msgs {
		d := receive(t, s, 10*time.Second).(*delivery)
		m := d.Message()
		if got, want := int(d.entry().rec.Partition), Partition(m.Key, 7); got != want {
			t.Errorf("key %q is on partition %d, Java's partitioner puts it on %d", m.Key, got, want)
		}
		seen[int(d.entry().rec.Partition)] = true
		_ = d.Ack(context.Background())
	}
	if len(seen) < 3 {
		t.Errorf("keys spread over %d partitions only", len(seen))
	}
}

func TestRoundtripKeepsEverything(t *testing.T) {
	b := testBroker(t, Options{})
	topic := newTopic(t)
	binary := []byte{0, 1, 2, 0xff, 0xfe, '\n', 0}
	at := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	sent := []*broker.Message{
		{ID: "id-1", Key: "k", Payload: binary, Headers: map[string]string{"a": "1", "bin": "\x00\xff", "empty": ""}, PublishedAt: at},
		{Key: "k", Payload: nil},      // tombstone
		{Key: "k", Payload: []byte{}}, // empty, not a tombstone
		{Payload: []byte("no key")},
	}
	publish(t, b, topic, sent...)
	if sent[1].ID == "" || sent[3].PublishedAt.IsZero() {
		t.Fatal("Publish must fill in ID and PublishedAt")
	}
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic})
	got := map[string]*broker.Message{}
	for range sent {
		d := receive(t, s, 10*time.Second)
		m := d.Message()
		got[m.ID] = m
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range sent {
		m := got[want.ID]
		if m == nil {
			t.Fatalf("message %d (id %s) not received", i, want.ID)
		}
		if m.Key != want.Key || !bytes.Equal(m.Payload, want.Payload) || (m.Payload == nil) != (want.Payload == nil) {
			t.Errorf("message %d: got key %q payload %q (nil %v), want %q %q (nil %v)", i, m.Key, m.Payload, m.Payload == nil, want.Key, want.Payload, want.Payload == nil)
		}
		if len(m.Headers) != len(want.Headers) {
			t.Errorf("message %d: headers %v, want %v (reserved headers must not leak)", i, m.Headers, want.Headers)
		}
		for k, v := range want.Headers {
			if m.Headers[k] != v {
				t.Errorf("message %d: header %q = %q, want %q", i, k, m.Headers[k], v)
			}
		}
		if m.Topic != topic || m.Attempt != 1 {
			t.Errorf("message %d: topic %q attempt %d", i, m.Topic, m.Attempt)
		}
		if !m.PublishedAt.Equal(want.PublishedAt.Truncate(time.Millisecond)) {
			t.Errorf("message %d: PublishedAt %v, want %v", i, m.PublishedAt, want.PublishedAt)
		}
	}
}

func TestPublishRefusesOversizeBeforeIO(t *testing.T) {
	qb, b := testQueuekit(t, Options{MaxMessageBytes: 1000})
	topic := newTopic(t)
	pub, _ := qb.NewPublisher(context.Background())
	err := pub.Publish(context.Background(), topic, &broker.Message{Payload: []byte("ok")}, &broker.Message{Payload: make([]byte, 1001)})
	if !errors.Is(err, broker.ErrTooLarge) || broker.KindOf(err) != semantics.InvalidArgument {
		t.Fatalf("err = %v, want ErrTooLarge / invalid argument", err)
	}
	// Nothing was sent, not even the small message: the topic was never
	// created.
	listed, lerr := b.Admin().ListTopics(context.Background(), topic)
	if lerr != nil {
		t.Fatal(lerr)
	}
	if d, ok := listed[topic]; ok && d.Err == nil {
		t.Fatal("a refused batch must do no I/O, but the topic exists")
	}
}

// TestPublishReportsWhichMessagesFailed makes the broker refuse one
// partition's batch (a record over the topic's max.message.bytes) and checks
// that exactly that message is reported, the others being stored.
func TestPublishReportsWhichMessagesFailed(t *testing.T) {
	b := testBroker(t, Options{Partitions: 3})
	topic := newTopic(t)
	if err := b.CreateTopic(context.Background(), TopicSpec{Name: topic, Configs: map[string]string{"max.message.bytes": "2000"}}); err != nil {
		t.Fatal(err)
	}
	bigKey := "big"
	var msgs []*broker.Message
	for i := 0; len(msgs) < 6; i++ {
		k := fmt.Sprint("small-", i)
		if Partition(k, 3) != Partition(bigKey, 3) {
			msgs = append(msgs, &broker.Message{Key: k, Payload: []byte(k)})
		}
	}
	msgs = append(msgs[:3], append([]*broker.Message{{Key: bigKey, Payload: randomBytes(5000)}}, msgs[3:]...)...)
	pub, _ := b.NewPublisher(context.Background())
	err := pub.Publish(testCtx(t, 15*time.Second), topic, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want a *broker.PublishError", err)
	}
	if len(pe.Failed) != 1 || pe.Failed[0].Index != 3 || pe.Failed[0].ID != msgs[3].ID {
		t.Fatalf("failed = %+v, want only index 3 (%s)", pe.Failed, msgs[3].ID)
	}
	if !errors.Is(pe.Failed[0].Err, kerr.MessageTooLarge) || broker.KindOf(pe.Failed[0].Err) != semantics.InvalidArgument {
		t.Errorf("failure = %v, want MessageTooLarge / invalid argument", pe.Failed[0].Err)
	}
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic})
	for range 6 {
		d := receive(t, s, 10*time.Second)
		if d.Message().Key == bigKey {
			t.Fatal("the refused message was stored")
		}
		_ = d.Ack(context.Background())
	}
}

// TestKafkaNamesCheckedBeforeIO: topic names Kafka would refuse are
// InvalidArgument errors from Publish, NewSubscriber, Declare, Lag and
// NewProcessor, before any I/O; a 249-character topic, Kafka's longest,
// works.
func TestKafkaNamesCheckedBeforeIO(t *testing.T) {
	qb, kb := testQueuekit(t, Options{Nack: NackRetryTopic})
	ctx := testCtx(t, 30*time.Second)
	pub, _ := qb.NewPublisher(ctx)
	for _, bad := range []string{"a b", "é", ".", "..", "a/b", strings.Repeat("t", 250)} {
		if err := pub.Publish(ctx, bad, &broker.Message{}); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Publish to topic %q: %v, want an invalid argument error", bad, err)
		}
		if _, err := qb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: bad}); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("NewSubscriber on topic %q: %v, want an invalid argument error", bad, err)
		}
		if err := qb.Declare(ctx, bad, "g"); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Declare of topic %q: %v, want an invalid argument error", bad, err)
		}
		if _, err := kb.Lag(ctx, bad, "g"); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Lag of topic %q: %v, want an invalid argument error", bad, err)
		}
		if _, err := kb.NewProcessor(ctx, ProcessorOptions{Topic: bad, Group: "g", TransactionalID: "tx"}); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("NewProcessor on topic %q: %v, want an invalid argument error", bad, err)
		}
		if listed, err := kb.Admin().ListTopics(ctx, bad); err == nil {
			if d, ok := listed[bad]; ok && d.Err == nil {
				t.Errorf("topic %q was created", bad)
			}
		}
	}
	// The retry topic, <topic>.<group>.retry, must be a legal name too.
	if _, err := qb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: strings.Repeat("t", 240), Group: "billing"}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("NewSubscriber whose retry topic is too long: %v, want an invalid argument error", err)
	}
	long := strings.Repeat("t", 249)
	if err := qb.Declare(ctx, long, "g"); err != nil {
		t.Fatalf("Declare of a 249-character topic: %v", err)
	}
	if err := pub.Publish(ctx, long, &broker.Message{Payload: []byte("x")}); err != nil {
		t.Errorf("Publish to a 249-character topic: %v", err)
	}
}

func TestPublishAfterClose(t *testing.T) {
	qb, _ := testQueuekit(t, Options{})
	pub, _ := qb.NewPublisher(context.Background())
	if err := pub.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(context.Background(), newTopic(t), &broker.Message{}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}

// randomBytes returns n incompressible bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
