package kafka

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	url             string // "consume": the broker URL
	in, out, group  string
	stopAfter       int
	guarantee       semantics.Guarantee // "consume"
	transactionalID string
	session         time.Duration // group session timeout: how soon the killed child leaves the group
}

func (c childConfig) env() []string {
	return append(os.Environ(),
		"QUEUEKIT_KAFKA_BROKERS="+strings.Join(c.seeds, ","),
		"QK_CHILD_URL="+c.url,
		"QK_CHILD_IN="+c.in, "QK_CHILD_OUT="+c.out, "QK_CHILD_GROUP="+c.group,
		"QK_CHILD_STOP_AFTER="+strconv.Itoa(c.stopAfter),
		"QK_CHILD_GUARANTEE="+c.guarantee.String(),
		"QK_CHILD_TXN_ID="+c.transactionalID,
		"QK_CHILD_SESSION="+c.session.String())
}

func readChildConfig() childConfig {
	n, _ := strconv.Atoi(os.Getenv("QK_CHILD_STOP_AFTER"))
	g, _ := semantics.ParseGuarantee(os.Getenv("QK_CHILD_GUARANTEE"))
	session, _ := time.ParseDuration(os.Getenv("QK_CHILD_SESSION"))
	return childConfig{
		session: session,
		seeds:   strings.Split(os.Getenv("QUEUEKIT_KAFKA_BROKERS"), ","),
		url:     os.Getenv("QK_CHILD_URL"),
		in:      os.Getenv("QK_CHILD_IN"), out: os.Getenv("QK_CHILD_OUT"), group: os.Getenv("QK_CHILD_GROUP"),
		stopAfter: n, guarantee: g, transactionalID: os.Getenv("QK_CHILD_TXN_ID"),
	}
}

// runChild is the child's main: it handles messages and prints each handled
// ID; after stopAfter of them one handler prints midstream and blocks
// (the others carry on) until the child is killed.
func runChild(role string) int {
	c := readChildConfig()
	ctx := context.Background()
	var handled atomic.Int64
	block := func() {
		fmt.Println(midstream)
		select {} // killed here
	}
	switch role {
	case "consume":
		b, err := broker.Open(ctx, c.url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: c.in, Group: c.group, Guarantee: c.guarantee})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		err = broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			fmt.Println("handled", m.ID)
			if handled.Add(1) == int64(c.stopAfter) {
				block()
			}
			return nil
		}), broker.ConsumeOptions{Concurrency: 4})
		fmt.Fprintln(os.Stderr, "consume returned", err)
	case "eos":
		b, err := New(ctx, Options{Brokers: c.seeds, SessionTimeout: c.session})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		p, err := b.NewProcessor(ctx, ProcessorOptions{Topic: c.in, Group: c.group, TransactionalID: c.transactionalID, MaxBatch: 20,
			ClientOptions: []kgo.Opt{kgo.TransactionTimeout(time.Second)}})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		err = p.Run(ctx, func(_ context.Context, in *broker.Message) ([]*broker.Message, error) {
			if handled.Add(1) > int64(c.stopAfter) {
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
	c.session = childSession(t)
	return testenv.StartChild(t, append(c.env(), childEnv+"="+role))
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

// childSession is the group session timeout of the children: short, so
// that the group notices a killed child soon.
func childSession(t *testing.T) time.Duration {
	if testenv.KafkaCluster(t) == nil {
		return 6 * time.Second // Kafka's default group.min.session.timeout.ms
	}
	return time.Second // kfake allows it (testenv sets a 500ms minimum)
}

// TestAtMostOnceSurvivesKills consumes a topic through broker.Consume with
// a broker opened from the default URL (only the session timeout is set,
// so that a killed member leaves the group quickly) and kills the consumer
// with SIGKILL, mid-stream and with four handlers busy, several times in a
// row. Declared AtMostOnce, the subscription commits each ack before its
// handler runs, so no message is ever handled twice (some may be lost: that
// is at-most-once). The AtLeastOnce control run shows the kills do cause
// redeliveries that the test sees.
func TestAtMostOnceSurvivesKills(t *testing.T) {
	seeds := testenv.Kafka(t)
	const n, kills, stopAfter = 1500, 5, 120
	for _, g := range []semantics.Guarantee{semantics.AtMostOnce, semantics.AtLeastOnce} {
		t.Run(g.String(), func(t *testing.T) {
			session := childSession(t)
			url := fmt.Sprintf("kafka://%s/?session_timeout=%v", strings.Join(seeds, ","), session)
			b, err := broker.Open(testCtx(t, 20*time.Second), url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close(context.Background()) })
			var kb *Broker
			if !b.As(&kb) {
				t.Fatal("broker.Open did not give a *kafka.Broker")
			}
			topic, group := newTopic(t), "kills"
			if err := b.Declare(testCtx(t, 20*time.Second), topic, group); err != nil {
				t.Fatal(err)
			}
			msgs := make([]*broker.Message, n)
			for i := range msgs {
				msgs[i] = &broker.Message{Key: fmt.Sprint("k", i%50), Payload: []byte(strconv.Itoa(i))}
			}
			pub, err := b.NewPublisher(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if err := pub.Publish(testCtx(t, 30*time.Second), topic, msgs...); err != nil {
				t.Fatal(err)
			}

			handled := map[string]int{}
			note := func(line string) {
				if id, ok := strings.CutPrefix(line, "handled "); ok {
					handled[id]++
				}
			}
			for range kills {
				child, lines := startChild(t, "consume", childConfig{seeds: seeds, url: url, in: topic, group: group, stopAfter: stopAfter, guarantee: g})
				for _, l := range untilMidstream(t, lines) {
					note(l)
				}
				_ = child.Process.Kill()
				_ = child.Wait()
				for l := range lines { // what it printed before it died
					note(l)
				}
			}

			// A last member finishes the topic.
			sub, err := b.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: topic, Group: group, Guarantee: g})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var mu sync.Mutex
			done := make(chan error, 1)
			go func() {
				done <- broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
					mu.Lock()
					handled[m.ID]++
					mu.Unlock()
					return nil
				}), broker.ConsumeOptions{Concurrency: 4})
			}()
			waitNoLag(t, kb, topic, group) // every message acknowledged and committed
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			_ = sub.Close(context.Background())
			mu.Lock()
			defer mu.Unlock()
			twice := 0
			for _, c := range handled {
				if c > 1 {
					twice++
				}
			}
			lost := 0
			for _, m := range msgs {
				if handled[m.ID] == 0 {
					lost++
				}
			}
			t.Logf("%v across %d kills: %d of %d messages handled more than once, %d never handled", g, kills, twice, n, lost)
			switch g {
			case semantics.AtMostOnce:
				if twice > 0 {
					t.Fatalf("at-most-once (default URL) handled %d messages twice across %d kills", twice, kills)
				}
			case semantics.AtLeastOnce:
				if lost > 0 {
					t.Fatalf("at-least-once lost %d messages", lost)
				}
				if twice == 0 {
					t.Fatalf("control: %d kills right after %d handled messages each should cause redeliveries, but none happened", kills, stopAfter)
				}
			}
		})
	}
}
