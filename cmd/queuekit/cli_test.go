package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/middleware/dlq"
)

// TestHelpExitsZero: -h of every command (and help, -h, --help, help CMD)
// prints its usage and exits 0; no command at all is a usage error (2).
func TestHelpExitsZero(t *testing.T) {
	c := newCLI(t)
	cases := [][]string{{"-h"}, {"--help"}, {"help"}, {"help", "publish"}, {"outbox", "status", "-h"}}
	for name := range commands {
		cases = append(cases, []string{name, "-h"})
	}
	for _, args := range cases {
		stdout, stderr, err := c.run("", args...)
		if code := exitCode(err); err != nil && code != 0 {
			t.Errorf("%v: exit status %d (%v), want 0", args, code, err)
		}
		if !strings.Contains(stdout+stderr, "sage") {
			t.Errorf("%v printed no usage:\n%s%s", args, stdout, stderr)
		}
	}
	if _, _, err := c.run(""); exitCode(err) != 2 {
		t.Errorf("no command: exit status %d, want 2", exitCode(err))
	}
}

// TestHelpShowsTheDefaultBrokerOnce: the -broker flag's help names its
// default once — $QUEUEKIT_BROKER when set, without its password.
func TestHelpShowsTheDefaultBrokerOnce(t *testing.T) {
	for _, tc := range []struct{ env, want string }{
		{"", "mem://"},
		{"amqp://guest:secret@127.0.0.1:5672/", "amqp://guest:xxxxx@127.0.0.1:5672/"},
	} {
		var out strings.Builder
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(k string) string {
			if k == "QUEUEKIT_BROKER" {
				return tc.env
			}
			return ""
		}}
		if err := run(context.Background(), e, []string{"tail", "-h"}); exitCode(err) != 0 {
			t.Fatalf("tail -h: %v", err)
		}
		help := out.String()
		if n := strings.Count(help, tc.want); n != 1 {
			t.Errorf("QUEUEKIT_BROKER=%q: help names %s %d times, want once:\n%s", tc.env, tc.want, n, help)
		}
		if strings.Contains(help, "secret") {
			t.Errorf("help shows the password:\n%s", help)
		}
	}
}

func TestVersion(t *testing.T) {
	c := newCLI(t)
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, _, err := c.run("", args...)
		if err != nil || !strings.HasPrefix(out, "queuekit ") || !regexp.MustCompile(`(?m)^adapters: .*\bmem\b`).MatchString(out) {
			t.Errorf("%v: %q, %v", args, out, err)
		}
	}
}

// TestPublishWithoutGroup: publishing before any group exists fails on
// every broker; the CLI says how to declare one, and warns that the default
// mem:// broker vanishes with the command.
func TestPublishWithoutGroup(t *testing.T) {
	var out, errOut strings.Builder
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }}
	err := run(context.Background(), e, []string{"publish", "-topic", "orders", "x"})
	if !errors.Is(err, broker.ErrNoGroup) || !strings.Contains(err.Error(), "queuekit declare -topic orders -group") {
		t.Errorf("publish to a topic without a group: %v", err)
	}
	if !strings.Contains(errOut.String(), "mem:// is the embedded broker of this process: what publish sends vanishes when it exits") {
		t.Errorf("no warning about the default mem:// broker:\n%s", errOut.String())
	}
}

// TestDeclareThenPublish: the topology flow of the README — declare, then
// publish, and the group holds the message.
func TestDeclareThenPublish(t *testing.T) {
	c := newCLI(t)
	if _, _, err := c.run("", "declare", "-topic", "orders"); !errors.Is(err, errUsage) {
		t.Errorf("declare without -group: %v, want a usage error", err)
	}
	out, _, err := c.run("", "declare", "-topic", "orders", "-group", "billing", "-group", "audit,queuekit-tail")
	if err != nil || !strings.Contains(out, "declared topic orders with group(s) billing, audit, queuekit-tail") {
		t.Fatalf("declare: %q, %v", out, err)
	}
	if _, _, err := c.run("", "publish", "-topic", "orders", "hello"); err != nil {
		t.Fatalf("publish after declare: %v", err)
	}
	for _, g := range []string{"billing", "audit", "queuekit-tail"} {
		out, _, err := c.run("", "lag", "-topic", "orders", "-group", g)
		if err != nil || !strings.Contains(strings.Join(strings.Fields(out), " "), "orders "+g+" 1 ") {
			t.Errorf("lag of %s: %q, %v", g, out, err)
		}
	}
}

// TestConformanceProgressAndDetail: conformance says on stderr which
// property runs and how it ended, one line each, and prints every detail
// whole, however long.
func TestConformanceProgressAndDetail(t *testing.T) {
	c := newCLI(t)
	_, stderr, err := c.run("", "conformance", "-only", "roundtrip,group.fanout")
	if err != nil {
		t.Fatalf("conformance: %v", err)
	}
	for _, want := range []string{`(?m)^conformance: \[1/2\] roundtrip \.\.\. pass \(`, `(?m)^conformance: \[2/2\] group\.fanout \.\.\. pass \(`} {
		if !regexp.MustCompile(want).MatchString(stderr) {
			t.Errorf("progress lacks %s:\n%s", want, stderr)
		}
	}
	long := "a_parameter_whose_name_makes_the_detail_of_every_property_longer_than_the_hundred_characters_once_shown"
	stdout, _, err := c.run("", "conformance", "-broker", "mem://?"+long+"=1", "-only", "roundtrip")
	if err == nil || !strings.Contains(stdout, "unknown URL parameter(s) "+long+" (valid: ") {
		t.Errorf("the detail was cut or lost (err %v):\n%s", err, stdout)
	}
}

// TestRedriveNeedsAnExistingGroup: redriving through a group that does not
// exist would move nothing (a new group gets only later dead letters):
// redrive says so and fails rather than print "moved 0".
func TestRedriveNeedsAnExistingGroup(t *testing.T) {
	c := newCLI(t)
	if err := c.b.Declare(context.Background(), "orders.dlq", "ops"); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.run("", "redrive", "-topic", "orders", "-idle", "100ms")
	if err == nil || !strings.Contains(err.Error(), "has no group queuekit-redrive") || !strings.Contains(err.Error(), "-group") {
		t.Errorf("redrive through a missing group: %v", err)
	}
	out, _, err := c.run("", "redrive", "-topic", "orders", "-group", "ops", "-idle", "100ms")
	if err != nil || !strings.Contains(out, "moved 0 dead letters from orders.dlq (group ops)") {
		t.Errorf("redrive -group ops: %q, %v", out, err)
	}
}

// TestRedriveProgress: on a log (not a terminal) redrive prints a progress
// line with count and rate every few seconds, not one per 100 messages; on
// a terminal it rewrites one line in place.
func TestRedriveProgress(t *testing.T) {
	var log strings.Builder
	now := time.Unix(0, 0)
	l := &progressLine{w: &log, every: progressLogEvery, now: func() time.Time { return now }, last: now}
	for i := 1; i <= 1000; i++ {
		now = now.Add(10 * time.Millisecond) // 100 messages a second for 10s
		l.report(dlq.Progress{Moved: i, Elapsed: time.Duration(i) * 10 * time.Millisecond})
	}
	l.report(dlq.Progress{Moved: 1000, Elapsed: 10 * time.Second, Done: true})
	want := "redrive: moved 500 (100/s), skipped 0, 5s\nredrive: moved 1000 (100/s), skipped 0, 10s\n"
	if log.String() != want {
		t.Errorf("progress on a log:\n%q\nwant\n%q", log.String(), want)
	}

	var tty strings.Builder
	now = time.Unix(0, 0)
	l = &progressLine{w: &tty, tty: true, every: progressTTYEvery, now: func() time.Time { return now }, last: now}
	for i := 1; i <= 100; i++ {
		now = now.Add(10 * time.Millisecond)
		l.report(dlq.Progress{Moved: i, Elapsed: time.Duration(i) * 10 * time.Millisecond})
	}
	l.report(dlq.Progress{Moved: 100, Elapsed: time.Second, Done: true})
	if strings.Count(tty.String(), "\n") != 0 || strings.Count(tty.String(), "\r") != 6 || !strings.Contains(tty.String(), "moved 100 (100/s)") {
		t.Errorf("progress on a terminal: %q", tty.String())
	}
}

// TestTailReturnsOnceDone: tail -n 2 on SQS returns once it printed two
// messages, not after its subscriber's 20s long polls.
func TestTailReturnsOnceDone(t *testing.T) {
	c := newCLIAt(t, "sqs://?endpoint="+url.QueryEscape(testenv.SQS(t)))
	topic := "tail-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, _, err := c.run("", "declare", "-topic", topic, "-group", "queuekit-tail"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.run("a\nb\n", "publish", "-topic", topic, "-lines"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, _, err := c.run("", "tail", "-topic", topic, "-n", "2")
	took := time.Since(start)
	if err != nil || strings.Count(out, "\n") != 2 {
		t.Fatalf("tail -n 2: %q, %v", out, err)
	}
	// The long poll lasts 20s; tail waits for its subscriber 1s at most.
	if took > 10*time.Second {
		t.Errorf("tail -n 2 took %v", took)
	}
}

// TestLagOnBrokers: lag works wherever the adapter tells a backlog — SQS
// (a queue's visible messages) and Kafka, where a group that never
// committed lags by the whole log.
func TestLagOnBrokers(t *testing.T) {
	for name, u := range lagBrokers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := newCLIAt(t, u(t))
			ctx := context.Background()
			topic := "lag-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			if err := c.b.Declare(ctx, topic, "billing"); err != nil {
				t.Fatal(err)
			}
			pub, err := c.b.NewPublisher(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close(ctx)
			for i := range 5 {
				if err := pub.Publish(ctx, topic, &broker.Message{Key: strconv.Itoa(i), Payload: []byte("x")}); err != nil {
					t.Fatal(err)
				}
			}
			out, _, err := c.run("", "lag", "-topic", topic, "-group", "billing")
			if err != nil {
				t.Fatalf("lag: %v", err)
			}
			if fields := strings.Fields(strings.Split(out, "\n")[1]); len(fields) < 3 || fields[2] != "5" {
				t.Errorf("lag of a group that consumed nothing:\n%s\nwant pending 5", out)
			}
		})
	}
}

var lagBrokers = map[string]func(*testing.T) string{
	"sqs":   func(t *testing.T) string { return "sqs://?endpoint=" + url.QueryEscape(testenv.SQS(t)) },
	"kafka": func(t *testing.T) string { return "kafka://" + strings.Join(testenv.Kafka(t), ",") },
}

// TestDeclareThenPublishInAnotherProcess: the README's command-line flow —
// queuekit declare, then queuekit publish, each its own connection — on a
// broker where the groups are the broker's own state (no client-side
// memory of the declaration).
func TestDeclareThenPublishInAnotherProcess(t *testing.T) {
	for name, u := range lagBrokers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := newCLIAt(t, u(t))
			topic := "declared-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			if _, _, err := c.run("", "declare", "-topic", topic, "-group", "billing"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.run("", "publish", "-topic", topic, "x"); err != nil {
				t.Errorf("publish after queuekit declare: %v", err)
			}
		})
	}
}

// TestRedriveRabbitMQNativeDeadLetters: RabbitMQ dead-letters natively into
// the group's own queue on the dead-letter topic (T.dlq.<group>); redrive
// -topic T finds them there and moves them back, rather than reading a
// fresh, empty group and printing "moved 0". When several groups hold
// copies, it names them and fails.
func TestRedriveRabbitMQNativeDeadLetters(t *testing.T) {
	amqpURL := testenv.RabbitMQ(t)
	c := newCLIAt(t, amqpURL)
	ctx := context.Background()
	topic := "redrive-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() {
		rb, err := rabbitmq.Dial(ctx, amqpURL, rabbitmq.Options{})
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer rb.Close(ctx)
		for _, tp := range []string{topic, dlq.Topic(topic)} {
			if err := rb.DeleteTopic(ctx, tp); err != nil {
				t.Logf("cleanup %s: %v", tp, err)
			}
		}
	})
	sub, err := c.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "billing", MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.run("a\nb\nc\n", "publish", "-topic", topic, "-lines"); err != nil {
		t.Fatal(err)
	}
	// Fail each message once: with MaxAttempts 1, RabbitMQ dead-letters it.
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for range 3 {
		d, err := sub.Receive(rctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Nack(rctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitDeadLetters(t, amqpURL, topic, 3)

	out, stderr, err := c.run("", "redrive", "-topic", topic, "-idle", "500ms")
	if err != nil || !strings.Contains(out, fmt.Sprintf("moved 3 dead letters from %s.dlq (group billing)", topic)) {
		t.Fatalf("redrive: %q, %v\n%s", out, err, stderr)
	}
	for range 3 {
		d, err := sub.Receive(rctx)
		if err != nil {
			t.Fatalf("redriven message not back in %s: %v", topic, err)
		}
		if d.Message().Headers[dlq.HeaderRedrives] == "" {
			t.Errorf("message back without %s: %+v", dlq.HeaderRedrives, d.Message())
		}
		if err := d.Ack(rctx); err != nil {
			t.Fatal(err)
		}
	}

	// A second group dead-lettering natively: every dead letter now has a
	// copy in each group's queue on the dead-letter topic.
	audit, err := c.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "audit", MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.run("", "publish", "-topic", topic, "d"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*broker.Subscriber{sub, audit} {
		d, err := s.Receive(rctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Nack(rctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitDeadLetters(t, amqpURL, topic, 2)
	_, _, err = c.run("", "redrive", "-topic", topic, "-idle", "500ms")
	if err == nil || !strings.Contains(err.Error(), "-group billing") || !strings.Contains(err.Error(), "-group audit") {
		t.Errorf("redrive with copies in two queues: %v, want an error naming both", err)
	}
}

// waitDeadLetters waits until topic's RabbitMQ dead-letter queues hold n
// messages in all.
func waitDeadLetters(t *testing.T, amqpURL, topic string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rb, err := rabbitmq.Dial(ctx, amqpURL, rabbitmq.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close(context.Background())
	for {
		qs, err := rb.DeadLetterQueues(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, q := range qs {
			total += q.Messages
		}
		if total >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("RabbitMQ's dead-letter queues of %s hold %d messages, want %d: %+v", topic, total, n, qs)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
