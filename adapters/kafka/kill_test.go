package kafka

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// The kill tests run a consumer in a child process (this test binary again,
// with childEnv set), let it get halfway, and kill it with SIGKILL: no Close,
// no commit, no leaving the group — a real crash.
const childEnv = "QUEUEKIT_KAFKA_TEST_CHILD"

// midstream is the line a child prints when it is blocked halfway and ready
// to be killed.
const midstream = "MIDSTREAM"

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	code := m.Run()
	testenv.StopServers() // the benchmarks' kfake processes
	os.Exit(code)
}

// childConfig is what a child reads from its environment.
type childConfig struct {
	seeds           []string
	in, out, group  string
	stopAfter       int
	commitOnAck     bool
	transactionalID string
	session         time.Duration // group session timeout: how soon the killed child leaves the group
}

func (c childConfig) env() []string {
	return append(os.Environ(),
		"QUEUEKIT_KAFKA_BROKERS="+strings.Join(c.seeds, ","),
		"QK_CHILD_IN="+c.in, "QK_CHILD_OUT="+c.out, "QK_CHILD_GROUP="+c.group,
		"QK_CHILD_STOP_AFTER="+strconv.Itoa(c.stopAfter),
		"QK_CHILD_COMMIT_ON_ACK="+strconv.FormatBool(c.commitOnAck),
		"QK_CHILD_TXN_ID="+c.transactionalID,
		"QK_CHILD_SESSION="+c.session.String())
}

func readChildConfig() childConfig {
	n, _ := strconv.Atoi(os.Getenv("QK_CHILD_STOP_AFTER"))
	coa, _ := strconv.ParseBool(os.Getenv("QK_CHILD_COMMIT_ON_ACK"))
	session, _ := time.ParseDuration(os.Getenv("QK_CHILD_SESSION"))
	return childConfig{
		session: session,
		seeds:   strings.Split(os.Getenv("QUEUEKIT_KAFKA_BROKERS"), ","),
		in:      os.Getenv("QK_CHILD_IN"), out: os.Getenv("QK_CHILD_OUT"), group: os.Getenv("QK_CHILD_GROUP"),
		stopAfter: n, commitOnAck: coa, transactionalID: os.Getenv("QK_CHILD_TXN_ID"),
	}
}

// runChild is the child's main: it handles stopAfter messages, prints each
// handled ID, then prints midstream and blocks until it is killed.
func runChild(role string) int {
	c := readChildConfig()
	ctx := context.Background()
	b, err := New(ctx, Options{Brokers: c.seeds, CommitOnAck: c.commitOnAck, SessionTimeout: c.session})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	handled := 0
	block := func() {
		fmt.Println(midstream)
		select {} // killed here
	}
	switch role {
	case "amo":
		sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: c.in, Group: c.group})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		err = broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			fmt.Println("handled", m.ID)
			if handled++; handled == c.stopAfter {
				block()
			}
			return nil
		}), broker.ConsumeOptions{Guarantee: semantics.AtMostOnce})
		fmt.Fprintln(os.Stderr, "consume returned", err)
	case "eos":
		p, err := b.NewProcessor(ctx, ProcessorOptions{Topic: c.in, Group: c.group, TransactionalID: c.transactionalID, MaxBatch: 20,
			ClientOptions: []kgo.Opt{kgo.TransactionTimeout(time.Second)}})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		err = p.Run(ctx, func(_ context.Context, in *broker.Message) ([]*broker.Message, error) {
			if handled++; handled > c.stopAfter {
				block()
			}
			return []*broker.Message{{ID: in.ID, Key: in.Key, Payload: in.Payload, Topic: c.out}}, nil
		})
		fmt.Fprintln(os.Stderr, "run returned", err)
	}
	return 3
}

// startChild runs role in a child process and returns the lines it prints.
func startChild(t *testing.T, role string, c childConfig) (*exec.Cmd, <-chan string) {
	t.Helper()
	c.session = time.Second // kfake allows it (testenv sets a 500ms minimum)
	if testenv.KafkaCluster(t) == nil {
		c.session = 6 * time.Second // Kafka's default group.min.session.timeout.ms
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(c.env(), childEnv+"="+role)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the child process: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return cmd, lines
}

// untilMidstream collects the lines before midstream.
func untilMidstream(t *testing.T, lines <-chan string) []string {
	t.Helper()
	var got []string
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the child exited before getting halfway; it printed %q", got)
			}
			if l == midstream {
				return got
			}
			got = append(got, l)
		case <-timeout:
			t.Fatalf("the child did not get halfway in 30s; it printed %q", got)
		}
	}
}

// TestAtMostOnceSurvivesKill kills an at-most-once consumer in the middle of
// a handler. With commit=ack, every message it acked was committed before
// its handler ran, so the next member never handles one again; with the
// default interval commits, the same kill makes the next member handle
// messages twice (the control run shows the test can tell).
func TestAtMostOnceSurvivesKill(t *testing.T) {
	seeds := testenv.Kafka(t)
	for _, commitOnAck := range []bool{true, false} {
		t.Run(fmt.Sprint("commit_on_ack=", commitOnAck), func(t *testing.T) {
			b := testBroker(t, Options{Partitions: 1, CommitOnAck: commitOnAck})
			topic := newTopic(t)
			const n, stopAfter = 30, 10
			publish(t, b, topic, numbered(n, "")...)
			child, lines := startChild(t, "amo", childConfig{seeds: seeds, in: topic, group: "amo", stopAfter: stopAfter, commitOnAck: commitOnAck})
			handled := map[string]int{}
			for _, l := range untilMidstream(t, lines) {
				if id, ok := strings.CutPrefix(l, "handled "); ok {
					handled[id]++
				}
			}
			_ = child.Process.Kill()
			_ = child.Wait()

			sub := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "amo"})
			twice := 0
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			last, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
					if handled[m.ID]++; handled[m.ID] > 1 {
						twice++
					}
					if string(m.Payload) == strconv.Itoa(n-1) {
						close(last)
					}
					return nil
				}), broker.ConsumeOptions{Guarantee: semantics.AtMostOnce})
			}()
			select {
			case <-last:
			case <-time.After(30 * time.Second):
				t.Fatal("the next member never reached the last message")
			}
			cancel()
			<-done
			if commitOnAck && twice > 0 {
				t.Fatalf("at-most-once with commit=ack handled %d messages twice across a kill", twice)
			}
			if !commitOnAck && twice == 0 {
				t.Fatalf("control: without commit=ack a kill right after %d acks should cause redeliveries, but none happened", stopAfter)
			}
			t.Logf("handled twice across the kill: %d", twice)
		})
	}
}
