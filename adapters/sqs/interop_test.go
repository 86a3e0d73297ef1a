package sqs_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// awsCLI runs the aws command line tool against the test endpoint, with
// placeholder credentials and no user configuration, and returns its
// standard output.
func awsCLI(t *testing.T, endpoint string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "aws", append([]string{"--endpoint-url", endpoint, "--region", "us-east-1", "--output", "json"}, args...)...)
	dir := t.TempDir()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "AWS_PAGER=",
		"AWS_CONFIG_FILE="+filepath.Join(dir, "config"), "AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(dir, "credentials"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("aws %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func needAWSCLI(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("aws"); err != nil {
		testenv.Unavailable(t, "the aws CLI", errors.New("aws is not on PATH"),
			"the interop test needs AWS CLI v1 (it speaks SQS's JSON protocol, as fauxqs does): it comes with the go-svc machine image (pyenv's pip package awscli); Debian's awscli 2.9 speaks the older query protocol and will not do")
	}
}

// Messages the aws CLI sends, with attributes of every type, are consumed
// intact; messages queuekit sends are read intact by the CLI.
func TestInteropWithAWSCLI(t *testing.T) {
	t.Parallel()
	needAWSCLI(t)
	b, qb := open(t, "")
	ep := testenv.SQS(t)
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp})
	queueURL := sqsSubscriber(t, sub).QueueURL()

	// CLI -> queuekit.
	var sent struct{ MessageId string }
	out := awsCLI(t, ep, "sqs", "send-message", "--queue-url", queueURL, "--message-body", "hello from the CLI: é ✓",
		"--message-attributes", `{"color":{"DataType":"String","StringValue":"blue"},"count":{"DataType":"Number","StringValue":"42"},"raw":{"DataType":"Binary","BinaryValue":"bytes as given"}}`)
	if err := json.Unmarshal(out, &sent); err != nil || sent.MessageId == "" {
		t.Fatalf("send-message output %s: %v", out, err)
	}
	d := receive(t, sub, 10*time.Second)
	m := d.Message()
	if string(m.Payload) != "hello from the CLI: é ✓" || m.ID != sent.MessageId || m.Attempt != 1 || m.PublishedAt.IsZero() {
		t.Errorf("from the CLI: payload %q id %q attempt %d at %v; want the body, id %s, attempt 1", m.Payload, m.ID, m.Attempt, m.PublishedAt, sent.MessageId)
	}
	// AWS CLI v1 sends the string given as a Binary value as its bytes.
	for k, v := range map[string]string{"color": "blue", "count": "42", "raw": "bytes as given"} {
		if m.Headers[k] != v {
			t.Errorf("from the CLI: header %s = %q, want %q (all: %q)", k, m.Headers[k], v, m.Headers)
		}
	}
	if err := d.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}

	// queuekit -> CLI, on a queue nobody else reads.
	tp = topic(t)
	plain, err := qb.EnsureQueue(context.Background(), qsqs.QueueName(tp, false), qsqs.QueueSpec{})
	if err != nil {
		t.Fatal(err)
	}
	p := publisher(t, b)
	msg := &broker.Message{Key: "order-7", Payload: []byte(`{"total":12.5}`), Headers: map[string]string{"tenant": "acme", "trace.id": "abc-123"}}
	if err := p.Publish(context.Background(), tp, msg); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Messages []struct {
			Body              string
			MessageAttributes map[string]struct{ DataType, StringValue string }
		}
	}
	out = awsCLI(t, ep, "sqs", "receive-message", "--queue-url", plain.URL, "--message-attribute-names", "All", "--wait-time-seconds", "5")
	if err := json.Unmarshal(out, &got); err != nil || len(got.Messages) != 1 {
		t.Fatalf("receive-message output %s: %v", out, err)
	}
	cm := got.Messages[0]
	if cm.Body != string(msg.Payload) {
		t.Errorf("the CLI read body %q, want %q", cm.Body, msg.Payload)
	}
	for k, v := range map[string]string{qsqs.AttrID: msg.ID, qsqs.AttrKey: "order-7", "tenant": "acme", "trace.id": "abc-123"} {
		if a := cm.MessageAttributes[k]; a.StringValue != v || a.DataType != "String" {
			t.Errorf("the CLI read attribute %s = %+v, want String %q", k, a, v)
		}
	}
}

// In fan-out mode a message the CLI publishes to the SNS topic reaches a
// group's queue raw, with its attributes.
func TestInteropSNSPublishFromCLI(t *testing.T) {
	t.Parallel()
	needAWSCLI(t)
	b, _ := open(t, "fanout=true")
	ep := testenv.SQS(t)
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Group: "billing"})
	var created struct{ TopicArn string }
	if err := json.Unmarshal(awsCLI(t, ep, "sns", "create-topic", "--name", qsqs.TopicName(tp, false)), &created); err != nil {
		t.Fatal(err)
	}
	awsCLI(t, ep, "sns", "publish", "--topic-arn", created.TopicArn, "--message", "from sns",
		"--message-attributes", `{"origin":{"DataType":"String","StringValue":"cli"}}`)
	m := receive(t, sub, 10*time.Second).Message()
	if string(m.Payload) != "from sns" || m.Headers["origin"] != "cli" {
		t.Errorf("got payload %q headers %v, want the raw message with origin=cli", m.Payload, m.Headers)
	}
}
