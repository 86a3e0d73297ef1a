package kafka

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// kafkajsRecord is what testdata/kafkajs.cjs reads and prints, one JSON
// object a line.
type kafkajsRecord struct {
	Partition int               `json:"partition,omitempty"`
	Offset    string            `json:"offset,omitempty"`
	Key       *string           `json:"key"`
	Value     string            `json:"value"` // base64
	Headers   map[string]string `json:"headers"`
}

// runKafkajs runs testdata/kafkajs.cjs with args and stdin, returning its
// standard output; it fails t with the script's standard error.
func runKafkajs(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	node, nodePath := testenv.KafkaJS(t)
	script, err := filepath.Abs(filepath.Join("testdata", "kafkajs.cjs"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(testCtx(t, 90*time.Second), node, append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), "NODE_PATH="+nodePath, "KAFKAJS_NO_PARTITIONER_WARNING=1")
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kafkajs %s: %v\nstderr: %s\nstdout: %s", args[0], err, stderr.String(), stdout.String())
	}
	return stdout.String()
}

// openDefault opens the test cluster with the default URL plus query, as
// an application would.
func openDefault(t *testing.T, query string) (*broker.Broker, *Broker) {
	t.Helper()
	b, err := broker.Open(testCtx(t, 20*time.Second), "kafka://"+strings.Join(testenv.Kafka(t), ",")+"/?"+query)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	var kb *Broker
	if !b.As(&kb) {
		t.Fatal("no *kafka.Broker behind broker.Open")
	}
	return b, kb
}

// TestInteropQueuekitToKafkajs publishes with the default URL (and with
// compression=gzip, the compression kafkajs reads) and reads with a kafkajs
// 2.2.4 consumer in a group declared by queuekit: keys, payloads (binary),
// headers (queuekit-id included) and partitions intact. With snappy, the
// old default, kafkajs crashed: KafkaJSNotImplemented: Snappy compression
// not implemented.
func TestInteropQueuekitToKafkajs(t *testing.T) {
	for _, query := range []string{"", "compression=gzip"} {
		t.Run("url=?"+query, func(t *testing.T) { queuekitToKafkajs(t, query) })
	}
}

func queuekitToKafkajs(t *testing.T, query string) {
	b, _ := openDefault(t, query)
	topic := newTopic(t)
	ctx := testCtx(t, 30*time.Second)
	group := "kafkajs-reader-" + topic
	if err := b.Declare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	sent := interopMessages(20)
	sent[7].Payload = bytes.Repeat([]byte("compressible "), 200) // a batch worth compressing
	pub, _ := b.NewPublisher(ctx)
	if err := pub.Publish(ctx, topic, sent...); err != nil {
		t.Fatal(err)
	}
	byKey := map[string]*broker.Message{}
	for _, m := range sent {
		byKey[m.Key] = m
	}
	out := runKafkajs(t, "", "consume", strings.Join(testenv.Kafka(t), ","), topic, group, fmt.Sprint(len(sent)))
	got := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r kafkajsRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("kafkajs printed %q: %v", sc.Text(), err)
		}
		got++
		if r.Key == nil || byKey[*r.Key] == nil {
			t.Fatalf("kafkajs read an unknown key %v", r.Key)
		}
		w := byKey[*r.Key]
		if v, _ := base64.StdEncoding.DecodeString(r.Value); !bytes.Equal(v, w.Payload) {
			t.Errorf("key %s: kafkajs read payload %q, want %q", w.Key, v, w.Payload)
		}
		if r.Partition != Partition(w.Key, testenv.KafkaPartitions) {
			t.Errorf("key %s on partition %d, kafkajs' partitioner puts it on %d", w.Key, r.Partition, Partition(w.Key, testenv.KafkaPartitions))
		}
		want := map[string]string{broker.HeaderID: w.ID}
		for k, v := range w.Headers {
			want[k] = v
		}
		if fmt.Sprint(r.Headers) != fmt.Sprint(want) {
			t.Errorf("key %s: kafkajs headers %v, want %v", w.Key, r.Headers, want)
		}
	}
	if got != len(sent) {
		t.Fatalf("kafkajs read %d messages, want %d", got, len(sent))
	}
}

// TestInteropKafkajsToQueuekit produces with kafkajs' default partitioner
// and consumes with the default URL: keyed messages are on the partitions
// queuekit's Partition computes, payloads and headers intact, a queuekit-id
// header from kafkajs is the message's ID, and a record without one is
// identified by its position.
func TestInteropKafkajsToQueuekit(t *testing.T) {
	_, kb := openDefault(t, "")
	topic := newTopic(t)
	s := subscribe(t, kb, broker.SubscriberOptions{Topic: topic, Group: "from-kafkajs"})
	want := map[string]*broker.Message{}
	var in strings.Builder
	for i, m := range interopMessages(20) {
		if i%2 == 0 {
			m.ID = fmt.Sprint("kjs-", i) // carried as queuekit-id
		}
		want[m.Key] = m
		hs := map[string]string{}
		for k, v := range m.Headers {
			hs[k] = v
		}
		if m.ID != "" {
			hs[broker.HeaderID] = m.ID
		}
		key := m.Key
		line, _ := json.Marshal(kafkajsRecord{Key: &key, Value: base64.StdEncoding.EncodeToString(m.Payload), Headers: hs})
		in.Write(append(line, '\n'))
	}
	if out := runKafkajs(t, in.String(), "produce", strings.Join(testenv.Kafka(t), ","), topic); !strings.Contains(out, "produced 20") {
		t.Fatalf("kafkajs produce printed %q", out)
	}
	for range want {
		d := receive(t, s, 15*time.Second).(*delivery)
		m := d.Message()
		w := want[m.Key]
		if w == nil {
			t.Fatalf("unexpected key %q", m.Key)
		}
		if !bytes.Equal(m.Payload, w.Payload) || fmt.Sprint(m.Headers) != fmt.Sprint(w.Headers) {
			t.Errorf("key %s: payload %q headers %v, want %q %v", m.Key, m.Payload, m.Headers, w.Payload, w.Headers)
		}
		if got := int(d.entry().rec.Partition); got != Partition(m.Key, testenv.KafkaPartitions) {
			t.Errorf("kafkajs put key %s on partition %d; Partition says %d", m.Key, got, Partition(m.Key, testenv.KafkaPartitions))
		}
		wantID := w.ID
		if wantID == "" {
			wantID = fmt.Sprintf("%s/%d/%d", topic, d.entry().rec.Partition, d.entry().offset())
		}
		if m.ID != wantID || m.Attempt != 1 {
			t.Errorf("key %s: ID %q attempt %d, want %q attempt 1", m.Key, m.ID, m.Attempt, wantID)
		}
		_ = d.Ack(context.Background())
	}
}
