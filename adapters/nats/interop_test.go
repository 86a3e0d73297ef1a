package nats

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os/exec"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/testenv"
)

// natsCLI runs the nats command-line tool against the test server.
func natsCLI(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.NATSCLI(t), append([]string{"-s", testenv.NATS(t)}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nats %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// TestInteropNATSCLI: what the nats command-line tool (natscli, built
// from the Go module proxy) publishes is consumed intact by a queuekit
// subscriber, and what queuekit publishes is read intact by the tool —
// through the group's own durable consumer, which the tool then acks.
func TestInteropNATSCLI(t *testing.T) {
	testenv.NATSCLI(t) // skip (fail under CI) before creating anything
	prefix := uniq("qkinterop")
	b, nb := openBroker(t, prefix, "")
	ctx := testCtx(t)

	t.Run("cli to queuekit", func(t *testing.T) {
		topic := prefix + ".from-cli"
		sub := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "qk"})
		payload := allBytes()
		natsCLI(t, payload, "pub", "--jetstream", "--force-stdin",
			"-H", driver.HeaderID+":cli-1", "-H", HeaderKey+":k1", "-H", "trace:abc", topic)
		natsCLI(t, nil, "pub", "--jetstream", "--no-templates", topic, "hello {{Count}}")
		d := receive(t, sub)
		m := d.Message()
		if m.ID != "cli-1" || m.Key != "k1" || !bytes.Equal(m.Payload, payload) || m.Headers["trace"] != "abc" || m.Attempt != 1 || m.Topic != topic {
			t.Errorf("from the CLI: ID %q key %q payload %q headers %v attempt %d topic %q", m.ID, m.Key, m.Payload, m.Headers, m.Attempt, m.Topic)
		}
		_ = d.Ack(ctx)
		d = receive(t, sub)
		if m := d.Message(); m.ID != StreamName(topic)+":2" || string(m.Payload) != "hello {{Count}}" || len(m.Headers) != 0 {
			t.Errorf("from the CLI without an ID: ID %q payload %q headers %v", m.ID, m.Payload, m.Headers)
		}
		_ = d.Ack(ctx)
	})

	t.Run("queuekit to cli", func(t *testing.T) {
		topic := prefix + ".to-cli"
		if err := b.Declare(ctx, topic, "cli"); err != nil {
			t.Fatal(err)
		}
		sent := &broker.Message{ID: "qk-1", Key: "order-7", Payload: allBytes(),
			Headers: map[string]string{"trace": "t-9", "multi-line": "a\nb", "Content-Type": "application/octet-stream"}}
		publish(t, b, topic, sent)

		// The tool reads through the group's durable consumer and acks.
		raw := natsCLI(t, nil, "consumer", "next", StreamName(topic), "cli", "--count", "1", "--raw")
		if got := bytes.TrimSuffix(raw, []byte("\n")); !bytes.Equal(got, sent.Payload) {
			t.Errorf("nats consumer next printed %q, want the 256 byte values", raw)
		}
		if bl, err := nb.Backlog(ctx, topic, "cli"); err != nil || bl.Total() != 0 {
			t.Errorf("after the tool acked: backlog %+v, %v; want nothing left", bl, err)
		}

		// The stored message as the tool shows it: header block and data.
		var stored struct {
			Subject string `json:"subject"`
			Hdrs    []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		}
		if err := json.Unmarshal(natsCLI(t, nil, "stream", "get", StreamName(topic), "1", "-j"), &stored); err != nil {
			t.Fatal(err)
		}
		if stored.Subject != topic || !bytes.Equal(stored.Data, sent.Payload) {
			t.Errorf("nats stream get: subject %q data %q", stored.Subject, stored.Data)
		}
		h, err := natsgo.DecodeHeadersMsg(stored.Hdrs)
		if err != nil {
			t.Fatal(err)
		}
		if h.Get(driver.HeaderID) != "qk-1" || h.Get(HeaderKey) != "order-7" || h.Get("trace") != "t-9" || h.Get("Content-Type") != "application/octet-stream" {
			t.Errorf("headers the tool sees: %v", h)
		}
		// The header NATS cannot carry as it is travels packed, and the
		// documented packing gives it back.
		var back driver.Message
		decode(&back, topic, stored.Data, h, StreamName(topic), 1, 1, time.Now())
		if back.ID != sent.ID || back.Key != sent.Key || !maps.Equal(back.Headers, sent.Headers) {
			t.Errorf("decoded from what the tool saw: %+v", back)
		}
	})
}
