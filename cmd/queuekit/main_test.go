package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dlq"
)

// cli runs one command in process against a private mem:// broker that a
// handle held by the test keeps alive between commands.
type cli struct {
	t   *testing.T
	url string
	b   *broker.Broker
}

func newCLI(t *testing.T) *cli {
	return newCLIAt(t, "mem://cli-"+strings.ReplaceAll(t.Name(), "/", "-"))
}

// newCLIAt is newCLI on the broker at url, which the commands get from
// QUEUEKIT_BROKER; c.b is the test's own connection to it.
func newCLIAt(t *testing.T, url string) *cli {
	b, err := broker.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	return &cli{t: t, url: url, b: b}
}

func (c *cli) run(stdin string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	e := &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, getenv: func(k string) string {
		if k == "QUEUEKIT_BROKER" {
			return c.url
		}
		return ""
	}}
	err = run(ctx, e, args)
	return out.String(), errOut.String(), err
}

func TestPublishThenTail(t *testing.T) {
	c := newCLI(t)
	// Subscribe the tail group first: a group gets what is published after it exists.
	sub, err := c.b.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: "orders", Group: "queuekit-tail"})
	if err != nil {
		t.Fatal(err)
	}
	sub.Close(context.Background())

	out, _, err := c.run("", "publish", "-topic", "orders", "-key", "o-1", "-H", "type=created", "-id", "fixed-id", `{"total":3}`)
	if err != nil || strings.TrimSpace(out) != "fixed-id" {
		t.Fatalf("publish: %q, %v", out, err)
	}
	out, _, err = c.run("a\nb\n\xff\n", "publish", "-topic", "orders", "-lines")
	if err != nil || len(strings.Fields(out)) != 3 {
		t.Fatalf("publish -lines: %q, %v", out, err)
	}

	out, _, err = c.run("", "tail", "-topic", "orders", "-n", "4", "-json")
	if err != nil {
		t.Fatalf("tail: %v", err)
	}
	var got []tailed
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m tailed
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("tail printed %q: %v", line, err)
		}
		got = append(got, m)
	}
	if len(got) != 4 {
		t.Fatalf("tail printed %d messages, want 4:\n%s", len(got), out)
	}
	first := got[0]
	if first.ID != "fixed-id" || first.Key != "o-1" || first.Headers["type"] != "created" || first.Payload != `{"total":3}` || first.Topic != "orders" {
		t.Errorf("first message = %+v", first)
	}
	if got[3].Encoding != "base64" || got[3].Payload != "/w==" {
		t.Errorf("binary payload = %+v, want base64 /w==", got[3])
	}
}

func TestRedriveMovesDeadLettersBack(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	for _, g := range []struct{ topic, group string }{{"orders.dlq", "queuekit-redrive"}, {"orders", "billing"}} {
		s, err := c.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: g.topic, Group: g.group})
		if err != nil {
			t.Fatal(err)
		}
		s.Close(ctx)
	}
	pub, _ := c.b.NewPublisher(ctx)
	defer pub.Close(ctx)
	dead := &broker.Message{ID: "m-1", Key: "k", Payload: []byte("p"), Headers: map[string]string{
		broker.HeaderOriginalTopic: "orders", broker.HeaderDeadReason: "boom", "user": "kept"}}
	if err := pub.Publish(ctx, "orders.dlq", dead); err != nil {
		t.Fatal(err)
	}
	out, _, err := c.run("", "redrive", "-topic", "orders", "-idle", "200ms")
	if err != nil || !strings.Contains(out, "moved 1 dead letters from orders.dlq") {
		t.Fatalf("redrive: %q, %v", out, err)
	}
	sub, _ := c.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	defer sub.Close(ctx)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d, err := sub.Receive(rctx)
	if err != nil {
		t.Fatalf("redriven message not in orders: %v", err)
	}
	m := d.Message()
	if m.ID != "m-1" || m.Key != "k" || string(m.Payload) != "p" || m.Headers["user"] != "kept" || m.Headers[dlq.HeaderRedrives] == "" {
		t.Errorf("redriven message = %+v", m)
	}
}

func TestConformanceCommand(t *testing.T) {
	c := newCLI(t)
	out, _, err := c.run("", "conformance", "-only", "roundtrip,group.fanout", "-report", t.TempDir()+"/r.json")
	if err != nil || !strings.Contains(out, "roundtrip") || !strings.Contains(out, "pass") {
		t.Fatalf("conformance: %q, %v", out, err)
	}
	if _, _, err := c.run("", "conformance", "-only", "no.such"); err == nil || !strings.Contains(err.Error(), "no.such") {
		t.Errorf("unknown property: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	c := newCLI(t)
	for _, tc := range []struct {
		args  []string
		usage bool
		want  string
	}{
		{nil, true, "no command"},
		{[]string{"frobnicate"}, true, `unknown command "frobnicate"`},
		{[]string{"publish", "x"}, true, "needs -topic"},
		{[]string{"publish", "-topic", "t", "-H", "novalue", "x"}, true, "not key=value"},
		{[]string{"tail", "-broker", "mem://?bogus=1", "-topic", "t"}, false, "unknown URL parameter(s) bogus"},
		{[]string{"lag", "-broker", "nosuch://h", "-topic", "t"}, false, `no adapter for scheme "nosuch"`},
		{[]string{"publish", "-broker", "amqp://u:secret@127.0.0.1:1/", "-topic", "t", "x"}, false, ""},
	} {
		_, _, err := c.run("", tc.args...)
		if err == nil {
			t.Errorf("%v: no error", tc.args)
			continue
		}
		if tc.usage != errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v (usage %v), want %q (usage %v)", tc.args, err, errors.Is(err, errUsage), tc.want, tc.usage)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%v: password in error: %v", tc.args, err)
		}
	}
}

func TestLag(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	sub, err := c.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	pub, _ := c.b.NewPublisher(ctx)
	defer pub.Close(ctx)
	if err := pub.Publish(ctx, "orders", &broker.Message{Payload: []byte("a")}, &broker.Message{Payload: []byte("b")}, &broker.Message{Payload: []byte("c")}); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Receive(ctx); err != nil { // one in flight, two pending
		t.Fatal(err)
	}
	out, _, err := c.run("", "lag", "-topic", "orders", "-group", "billing")
	if err != nil {
		t.Fatalf("lag: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[1]), " ") != "orders billing 2 1 0 1" {
		t.Errorf("lag printed:\n%s\nwant pending 2, in flight 1, delayed 0, consumers 1", out)
	}
	if _, _, err := c.run("", "lag", "-topic", "orders", "-group", "nobody"); err == nil || !strings.Contains(err.Error(), "no group") {
		t.Errorf("lag of a missing group: %v", err)
	}
}
