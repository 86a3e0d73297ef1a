package main

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	// The test binary links every adapter, whatever the build tags; the
	// example itself links mem:// alone by default (TestLinksNoSDK).
	_ "github.com/queuekit/queuekit/adapters/all"
	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// brokers are where TestOrders runs the example: a name, the adapter's URL
// scheme (a row whose adapter is not linked in adapters/all yet is skipped)
// and the URL of a test server from internal/testenv.
var brokers = []struct {
	name   string
	scheme string
	url    func(t *testing.T) string
}{
	{"memory", "mem", func(t *testing.T) string { return "mem://orders-test" }},
	{"kafka", "kafka", func(t *testing.T) string { return "kafka://" + strings.Join(testenv.Kafka(t), ",") }},
	{"rabbitmq", "amqp", func(t *testing.T) string { return testenv.RabbitMQ(t) }},
	{"sqs", "sqs", func(t *testing.T) string { return "sqs://?endpoint=" + url.QueryEscape(testenv.SQS(t)) }},
	{"sqs-fifo", "sqs", func(t *testing.T) string { return "sqs://?fifo=true&endpoint=" + url.QueryEscape(testenv.SQS(t)) }},
	{"sqs-sns", "sqs", func(t *testing.T) string { return "sqs://?fanout=true&endpoint=" + url.QueryEscape(testenv.SQS(t)) }},
	{"pubsub", "gcppubsub", func(t *testing.T) string {
		project, emulator := testenv.PubSub(t)
		if emulator == "" {
			return "gcppubsub://" + project
		}
		return "gcppubsub://" + project + "?emulator=" + emulator
	}},
	{"nats", "nats", func(t *testing.T) string {
		addr := testenv.Env("QUEUEKIT_NATS_ADDR", "127.0.0.1:4222")
		if err := testenv.Reachable(addr, 2*time.Second); err != nil {
			testenv.Unavailable(t, "NATS JetStream", err, "start nats-server -js on 127.0.0.1:4222, or point QUEUEKIT_NATS_ADDR at one")
		}
		return "nats://" + addr
	}},
	{"redis-streams", "redis+streams", func(t *testing.T) string { return "redis+streams://" + testenv.Redis(t) }},
}

// TestOrders runs the example end to end on every broker queuekit has an
// adapter for (in parallel: each run has a topic of its own), and checks
// the summary it prints: nothing lost, nothing handled twice, nothing out
// of order within an order, every poison event dead-lettered (and not
// counted as lost), every copy published twice either suppressed by the
// dedupe middleware or dropped by the broker itself (SQS FIFO).
func TestOrders(t *testing.T) {
	for _, bk := range brokers {
		t.Run(bk.name, func(t *testing.T) {
			if !slices.Contains(broker.Schemes(), bk.scheme) {
				t.Skipf("no %s:// adapter is linked in adapters/all yet", bk.scheme)
			}
			t.Parallel()
			u := bk.url(t)
			topic := "orders-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			if bk.name == "rabbitmq" {
				t.Cleanup(func() { deleteRabbitTopics(t, u, topic) })
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var out bytes.Buffer
			if err := run(ctx, config{url: u, topic: topic, orders: 100}, &out); err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			s := out.String()
			for _, want := range []string{
				"published                312  (300 events, 12 published twice on purpose)",
				"handled                  298",
				"dead-lettered              2",
				"handled twice              0",
				"reordered within a key     0",
				"lost                       0",
			} {
				if !strings.Contains(s, want) {
					t.Errorf("summary lacks %q:\n%s", want, s)
				}
			}
			if n := count(t, s, "duplicates suppressed") + count(t, s, "duplicates not sent"); n != 12 {
				t.Errorf("duplicates suppressed + not sent = %d, want 12:\n%s", n, s)
			}
			if bk.name == "sqs-fifo" && count(t, s, "duplicates not sent") != 12 {
				t.Errorf("SQS FIFO delivered copies of an ID published within five minutes:\n%s", s)
			}
			t.Logf("\n%s", s)
		})
	}
}

// TestTimeout checks that the run ends by its deadline, closing included
// (an SQS subscriber's Close waits for its 20s long polls unless its ctx
// ends first), and that the events still unsettled then are reported as
// such, not as lost.
func TestTimeout(t *testing.T) {
	for _, bk := range []string{"memory", "sqs"} {
		t.Run(bk, func(t *testing.T) {
			t.Parallel()
			var u string
			for _, b := range brokers {
				if b.name == bk {
					u = b.url(t)
				}
			}
			const timeout = 4 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			var out bytes.Buffer
			// 150 events taking 1s each on 8 handlers cannot be done in 4s.
			err := run(ctx, config{url: u, topic: "orders-timeout-" + strconv.FormatInt(time.Now().UnixNano(), 36), orders: 50, work: time.Second}, &out)
			took := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), "timed out") {
				t.Fatalf("run = %v, want a timeout error\n%s", err, out.String())
			}
			if took > timeout+2*time.Second {
				t.Errorf("run took %v with a %v deadline", took, timeout)
			}
			if count(t, out.String(), "lost") != 0 || count(t, out.String(), "not settled yet") == 0 {
				t.Errorf("the unsettled events must be reported as not settled, not lost:\n%s", out.String())
			}
		})
	}
}

// TestLinksNoSDK checks that the example links no broker SDK unless built
// with -tags allbrokers, so that its first `go run` on a fresh machine
// downloads and compiles none.
func TestLinksNoSDK(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on PATH: %v", err)
	}
	sdk := regexp.MustCompile(`(?m)^(github\.com/twmb/franz-go|github\.com/rabbitmq/amqp091-go|github\.com/aws/|cloud\.google\.com/go|google\.golang\.org/grpc|github\.com/nats-io|github\.com/redis/)`)
	list := func(tags ...string) string {
		out, err := exec.Command(goCmd, append(append([]string{"list", "-deps"}, tags...), ".")...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		return string(out)
	}
	if found := sdk.FindAllString(list(), -1); len(found) > 0 {
		t.Errorf("the example links broker SDKs by default: %v", found)
	}
	if found := sdk.FindAllString(list("-tags", "allbrokers"), -1); len(found) == 0 {
		t.Errorf("with -tags allbrokers the example links no broker SDK: is brokers.go still there?")
	}
}

// count returns the number on the summary line that starts with label.
func count(t *testing.T, summary, label string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(label) + ` +(\d+)`).FindStringSubmatch(summary)
	if m == nil {
		t.Fatalf("summary lacks %q:\n%s", label, summary)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// deleteRabbitTopics removes the queues the example declared on the shared
// server: its topic's and its dead-letter topic's.
func deleteRabbitTopics(t *testing.T, u, topic string) {
	ctx := context.Background()
	b, err := rabbitmq.Dial(ctx, u, rabbitmq.Options{})
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer b.Close(ctx)
	for _, tp := range []string{topic, topic + ".dlq"} {
		if err := b.DeleteTopic(ctx, tp); err != nil {
			t.Errorf("cleanup %s: %v", tp, fmt.Sprint(err))
		}
	}
}
