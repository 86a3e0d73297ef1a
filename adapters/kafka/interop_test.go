package kafka

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// Interop: records written by other clients are consumed intact, and what
// the adapter publishes is read intact by them — keys on the same
// partitions, since all hash keys with murmur2.

const interopParts = 3

// interopMessages are keyed messages with headers and a binary payload.
func interopMessages(n int) []*broker.Message {
	ms := make([]*broker.Message, n)
	for i := range ms {
		ms[i] = &broker.Message{
			Key:     fmt.Sprint("order-", i),
			Payload: append([]byte(fmt.Sprintf("payload %d ", i)), 0, 0xff, byte(i)),
			Headers: map[string]string{"content-type": "application/x-test", "seq": fmt.Sprint(i)},
		}
	}
	return ms
}

// consumeForeign receives n records written by another client and checks
// key, payload, headers and partition against want (by key).
func consumeForeign(t *testing.T, b *Broker, topic string, want map[string]*broker.Message) {
	t.Helper()
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic})
	for range len(want) {
		d := receive(t, s, 15*time.Second).(*delivery)
		m := d.Message()
		w, ok := want[m.Key]
		if !ok {
			t.Fatalf("unexpected key %q", m.Key)
		}
		if !bytes.Equal(m.Payload, w.Payload) {
			t.Errorf("key %s: payload %q, want %q", m.Key, m.Payload, w.Payload)
		}
		if fmt.Sprint(m.Headers) != fmt.Sprint(w.Headers) {
			t.Errorf("key %s: headers %v, want %v", m.Key, m.Headers, w.Headers)
		}
		if got := int(d.entry().rec.Partition); got != Partition(m.Key, interopParts) {
			t.Errorf("key %s is on partition %d; the adapter would put it on %d", m.Key, got, Partition(m.Key, interopParts))
		}
		if wantID := fmt.Sprintf("%s/%d/%d", topic, d.entry().rec.Partition, d.entry().offset()); m.ID != wantID {
			t.Errorf("key %s: ID %q, want %q for a record without queuekit-id", m.Key, m.ID, wantID)
		}
		_ = d.Ack(context.Background())
	}
}

func TestInteropKafkaGoToQueuekit(t *testing.T) {
	b := testBroker(t, Options{Partitions: interopParts})
	topic := newTopic(t)
	if err := b.EnsureTopic(context.Background(), topic); err != nil {
		t.Fatal(err)
	}
	// A Transport of its own: kafka-go's shared default one caches the
	// cluster's metadata from earlier tests, which lacks the new topic
	// (WriteMessages then failed with Unknown Topic Or Partition).
	transport := &kafkago.Transport{}
	defer transport.CloseIdleConnections()
	w := &kafkago.Writer{Addr: kafkago.TCP(testenv.Kafka(t)...), Topic: topic, Balancer: &kafkago.Murmur2Balancer{},
		BatchTimeout: 5 * time.Millisecond, RequiredAcks: kafkago.RequireAll, Transport: transport}
	defer w.Close()
	want := map[string]*broker.Message{}
	var kms []kafkago.Message
	for _, m := range interopMessages(20) {
		want[m.Key] = m
		km := kafkago.Message{Key: []byte(m.Key), Value: m.Payload}
		for k, v := range m.Headers {
			km.Headers = append(km.Headers, kafkago.Header{Key: k, Value: []byte(v)})
		}
		kms = append(kms, km)
	}
	if err := w.WriteMessages(testCtx(t, 20*time.Second), kms...); err != nil {
		t.Fatalf("kafka-go WriteMessages: %v", err)
	}
	consumeForeign(t, b, topic, want)
}

func TestInteropQueuekitToKafkaGo(t *testing.T) {
	b := testBroker(t, Options{Partitions: interopParts})
	topic := newTopic(t)
	sent := interopMessages(20)
	publish(t, b, topic, sent...)
	byKey := map[string]*broker.Message{}
	for _, m := range sent {
		byKey[m.Key] = m
	}
	got := 0
	for p := 0; p < interopParts; p++ {
		r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: testenv.Kafka(t), Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		conn, err := kafkago.DialLeader(context.Background(), "tcp", testenv.Kafka(t)[0], topic, p)
		if err != nil {
			t.Fatal(err)
		}
		end, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		for off := int64(0); off < end; off++ {
			km, err := r.ReadMessage(testCtx(t, 15*time.Second))
			if err != nil {
				t.Fatalf("kafka-go ReadMessage: %v", err)
			}
			got++
			w := byKey[string(km.Key)]
			if w == nil {
				t.Fatalf("kafka-go read an unknown key %q", km.Key)
			}
			if Partition(w.Key, interopParts) != km.Partition {
				t.Errorf("key %s on partition %d, want %d", w.Key, km.Partition, Partition(w.Key, interopParts))
			}
			if !bytes.Equal(km.Value, w.Payload) {
				t.Errorf("key %s: kafka-go read %q, want %q", w.Key, km.Value, w.Payload)
			}
			hs := map[string]string{}
			for _, h := range km.Headers {
				hs[h.Key] = string(h.Value)
			}
			if hs[broker.HeaderID] != w.ID || hs["seq"] != w.Headers["seq"] || hs["content-type"] != w.Headers["content-type"] || len(hs) != 3 {
				t.Errorf("key %s: kafka-go headers %v, want %v and %s=%s", w.Key, hs, w.Headers, broker.HeaderID, w.ID)
			}
		}
		r.Close()
	}
	if got != len(sent) {
		t.Fatalf("kafka-go read %d messages, want %d", got, len(sent))
	}
}

// kcatPath finds kcat (Debian package kcat; older name kafkacat).
func kcatPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"kcat", "kafkacat"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Unavailable(t, "kcat", fmt.Errorf("kcat is not on PATH"), "install it with `apt-get install -y kcat` (Debian/Ubuntu)")
	return ""
}

func TestInteropKcatToQueuekit(t *testing.T) {
	kcat := kcatPath(t)
	b := testBroker(t, Options{Partitions: interopParts})
	topic := newTopic(t)
	if err := b.EnsureTopic(context.Background(), topic); err != nil {
		t.Fatal(err)
	}
	want := map[string]*broker.Message{}
	var in strings.Builder
	for i := 0; i < 20; i++ {
		m := &broker.Message{Key: fmt.Sprint("order-", i), Payload: []byte(fmt.Sprintf("kcat payload %d", i)),
			Headers: map[string]string{"source": "kcat", "tenant": "t-9"}}
		want[m.Key] = m
		fmt.Fprintf(&in, "%s\t%s\n", m.Key, m.Payload)
	}
	// librdkafka's murmur2_random is the Java partitioner (its default,
	// consistent_random, hashes with CRC32).
	cmd := exec.CommandContext(testCtx(t, 30*time.Second), kcat, "-P", "-b", strings.Join(testenv.Kafka(t), ","), "-t", topic,
		"-K", "\t", "-H", "source=kcat", "-H", "tenant=t-9", "-X", "partitioner=murmur2_random")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat -P: %v\n%s", err, out)
	}
	consumeForeign(t, b, topic, want)
}

func TestInteropQueuekitToKcat(t *testing.T) {
	kcat := kcatPath(t)
	b := testBroker(t, Options{Partitions: interopParts})
	topic := newTopic(t)
	sent := make([]*broker.Message, 20)
	byKey := map[string]*broker.Message{}
	for i := range sent {
		sent[i] = &broker.Message{Key: fmt.Sprint("order-", i), Payload: []byte(fmt.Sprintf("to kcat %d", i)),
			Headers: map[string]string{"trace": fmt.Sprint("t", i), "unicode": "héllo ✓"}}
		byKey[sent[i].Key] = sent[i]
	}
	publish(t, b, topic, sent...)
	cmd := exec.CommandContext(testCtx(t, 30*time.Second), kcat, "-C", "-b", strings.Join(testenv.Kafka(t), ","), "-t", topic,
		"-o", "beginning", "-e", "-q", "-J")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kcat -C: %v", err)
	}
	got := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var rec struct {
			Partition int      `json:"partition"`
			Key       string   `json:"key"`
			Payload   string   `json:"payload"`
			Headers   []string `json:"headers"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("kcat output %q: %v", sc.Text(), err)
		}
		got++
		w := byKey[rec.Key]
		if w == nil {
			t.Fatalf("kcat read unknown key %q", rec.Key)
		}
		if rec.Payload != string(w.Payload) || rec.Partition != Partition(w.Key, interopParts) {
			t.Errorf("key %s: kcat read %q on partition %d, want %q on %d", w.Key, rec.Payload, rec.Partition, w.Payload, Partition(w.Key, interopParts))
		}
		hs := map[string]string{}
		for i := 0; i+1 < len(rec.Headers); i += 2 {
			hs[rec.Headers[i]] = rec.Headers[i+1]
		}
		if hs[broker.HeaderID] != w.ID || hs["trace"] != w.Headers["trace"] || hs["unicode"] != w.Headers["unicode"] || len(hs) != 3 {
			t.Errorf("key %s: kcat headers %v, want %v and %s=%s", w.Key, hs, w.Headers, broker.HeaderID, w.ID)
		}
	}
	if got != len(sent) {
		t.Fatalf("kcat read %d records, want %d:\n%s", got, len(sent), out)
	}
}
