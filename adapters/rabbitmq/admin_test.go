package rabbitmq

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// dialPlain opens a Broker with no cleanup hook, the way the queuekit
// command or another process would; it is closed when the test ends.
func dialPlain(t *testing.T, params string) *broker.Broker {
	t.Helper()
	u := testenv.RabbitMQ(t)
	if params != "" {
		u += "?" + params
	}
	rb, err := Dial(ctxT(t, 10*time.Second), u, Options{Logger: quiet})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	b := broker.New(rb)
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

// Issue 17, item 11: with native dead-lettering the dead letters of topic T
// wait in the group's queue on T.dlq, "T.dlq.<group>", which the generic
// redrive (group queuekit-redrive on T.dlq) never reads. DeadLetterQueues
// finds them from another process, by the topic alone, and consuming the
// queue as its group gets them.
func TestDeadLetterQueuesFindsNativeDeadLettersFromAnotherProcess(t *testing.T) {
	app := dialPlain(t, "")
	topic := uniq("redrive")
	t.Cleanup(func() { deleteTopics(t, topic, topic+".dlq") })
	opts := broker.SubscriberOptions{Topic: topic, Group: "billing", MaxAttempts: 2}
	sub := newSub(t, app, opts)
	newSub(t, app, broker.SubscriberOptions{Topic: topic, Group: "audit"}) // no dead-lettering
	pub := newPub(t, app)
	const n = 3
	for i := range n {
		if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: fmt.Sprint("dead-", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 * n { // two attempts each, then RabbitMQ dead-letters
		if err := receive(t, sub, 10*time.Second).Nack(ctxT(t, 5*time.Second), 0); err != nil {
			t.Fatal(err)
		}
	}

	cli := rabbit(t, dialPlain(t, "")) // another process: knows nothing of the topic
	var qs []QueueInfo
	deadline := time.Now().Add(10 * time.Second)
	for { // RabbitMQ dead-letters asynchronously after the last reject
		var err error
		if qs, err = cli.DeadLetterQueues(ctxT(t, 10*time.Second), topic); err != nil {
			t.Fatalf("DeadLetterQueues: %v", err)
		}
		if len(qs) != 1 || qs[0].Messages == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := QueueInfo{Queue: topic + ".dlq.billing", Role: RoleDeadLetter, Topic: topic + ".dlq", Group: "billing", Messages: n}
	if len(qs) != 1 || qs[0] != want {
		t.Fatalf("DeadLetterQueues = %+v, want [%+v]", qs, want)
	}
	all, err := cli.Queues(ctxT(t, 10*time.Second), topic)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, q := range all {
		names = append(names, q.Role+":"+q.Queue)
	}
	if wantNames := []string{"group:" + topic + ".audit", "group:" + topic + ".billing", "dead-letter:" + topic + ".dlq.billing"}; !slices.Equal(names, wantNames) {
		t.Errorf("Queues = %v, want %v", names, wantNames)
	}

	// What the queuekit command does with them: consume the queue as its
	// group on the dead-letter topic.
	redrive := newSub(t, broker.New(cli), broker.SubscriberOptions{Topic: qs[0].Topic, Group: qs[0].Group})
	got := map[string]bool{}
	for range n {
		d := receive(t, redrive, 10*time.Second)
		got[d.Message().ID] = true
		if d.Message().Header(broker.HeaderOriginalTopic) != topic {
			t.Errorf("dead letter %s: original topic %q", d.Message().ID, d.Message().Header(broker.HeaderOriginalTopic))
		}
		if err := d.Ack(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != n {
		t.Errorf("redrive received %v, want the %d dead letters", got, n)
	}
}

// DeleteTopic deletes, from another process, every queue recorded for the
// topic: group queues, dead-letter queues, delay queues, and the registry.
func TestDeleteTopicDeletesWhatOtherProcessesDeclared(t *testing.T) {
	topic := uniq("deltopic")
	var declared recorder
	rb, err := Dial(ctxT(t, 10*time.Second), testenv.RabbitMQ(t), Options{Logger: quiet, OnDeclare: declared.add})
	if err != nil {
		t.Fatal(err)
	}
	app := broker.New(rb)
	defer app.Close(context.Background())
	sub := newSub(t, app, broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: 3})
	if err := app.Declare(ctxT(t, 10*time.Second), topic, "declared"); err != nil {
		t.Fatal(err)
	}
	if err := newPub(t, app).Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "m"}); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, sub, 5*time.Second).Nack(ctxT(t, 5*time.Second), 20*time.Millisecond); err != nil {
		t.Fatal(err) // declares a delay queue
	}
	receive(t, sub, 10*time.Second) // back from the delay queue
	if err := sub.Close(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	queues := declared.names()
	if len(queues) < 5 {
		t.Fatalf("declared only %v", queues)
	}

	other := rabbit(t, dialPlain(t, ""))
	if err := other.DeleteTopic(ctxT(t, 20*time.Second), topic); err != nil {
		t.Fatalf("DeleteTopic: %v", err)
	}
	if err := other.DeleteTopic(ctxT(t, 20*time.Second), topic+".dlq"); err != nil {
		t.Fatalf("DeleteTopic of the dead-letter topic: %v", err)
	}
	if left := existing(t, other, queues); len(left) > 0 {
		t.Errorf("after DeleteTopic these queues remain: %v (declared: %v)", left, queues)
	}
	if err := other.DeleteTopic(ctxT(t, 10*time.Second), topic); err != nil {
		t.Errorf("DeleteTopic again: %v", err)
	}
}

// recorder collects the queue names a Broker declares (Options.OnDeclare).
type recorder struct {
	mu sync.Mutex
	qs []string
}

func (r *recorder) add(q string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Contains(r.qs, q) {
		r.qs = append(r.qs, q)
	}
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.qs)
}

// existing returns those of queues that exist, by passive declaration (no
// management plugin needed).
func existing(t *testing.T, b *Broker, queues []string) []string {
	t.Helper()
	var left []string
	for _, q := range queues {
		_, err := b.inspect(ctxT(t, 10*time.Second), "test: exists", entry{Queue: q})
		switch broker.KindOf(err) {
		case semantics.NotFound:
		case semantics.Unknown:
			left = append(left, q)
		default:
			t.Errorf("passive declare of %s: %v", q, err)
		}
	}
	return left
}

// deleteTopics deletes topics from a Broker of its own, at the end of a
// test.
func deleteTopics(t *testing.T, topics ...string) {
	rb, err := Dial(context.Background(), testenv.RabbitMQ(t), Options{Logger: quiet})
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer rb.Close(context.Background())
	for _, topic := range topics {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := rb.DeleteTopic(ctx, topic); err != nil {
			t.Errorf("cleanup: DeleteTopic(%s): %v", topic, err)
		}
		cancel()
	}
}

// queuesWithPrefix lists the server's queues whose name starts with prefix
// through rabbitmqctl, or reports false when rabbitmqctl is not usable
// here (another host, another user).
func queuesWithPrefix(prefix string) ([]string, bool) {
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		return nil, false
	}
	out, err := exec.Command(ctl, "-q", "list_queues", "--no-table-headers", "name").Output()
	if err != nil {
		return nil, false
	}
	var qs []string
	for _, line := range strings.Split(string(out), "\n") {
		if name := strings.TrimSpace(line); strings.HasPrefix(name, prefix) {
			qs = append(qs, name)
		}
	}
	return qs, true
}

// With registry=false no stream is declared, and DeleteTopic deletes what
// this Broker declared.
func TestNoRegistryDeletesWhatItDeclared(t *testing.T) {
	var declared recorder
	rb, err := Dial(ctxT(t, 10*time.Second), testenv.RabbitMQ(t)+"?registry=false", Options{Logger: quiet, OnDeclare: declared.add})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(rb)
	defer b.Close(context.Background())
	topic := uniq("noregistry")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: 2})
	if err := sub.Close(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	queues := declared.names()
	for _, q := range queues {
		if strings.HasSuffix(q, registrySuffix) {
			t.Errorf("registry=false declared %s", q)
		}
	}
	if len(queues) != 2 {
		t.Errorf("declared %v, want the group's queue and its dead-letter queue", queues)
	}
	if err := rb.DeleteTopic(ctxT(t, 10*time.Second), topic); err != nil {
		t.Fatal(err)
	}
	if left := existing(t, rb, queues); len(left) > 0 {
		t.Errorf("left after DeleteTopic: %v", left)
	}
}

// DeleteSubscription of a topic's last group, and testenv.DeleteRabbitMQ of
// its queues, delete the topic's registry too: code that cleans up by
// queue leaves nothing behind.
func TestDeletingTheLastQueueDeletesTheRegistry(t *testing.T) {
	url := testenv.RabbitMQ(t)
	b := dialPlain(t, "")
	rb := rabbit(t, b)
	ctx := ctxT(t, 30*time.Second)
	one, two := uniq("last"), uniq("last")
	for _, topic := range []string{one, two} {
		if err := b.Declare(ctx, topic, "a", "b"); err != nil {
			t.Fatal(err)
		}
	}
	if err := rb.DeleteSubscription(ctx, one, "a"); err != nil {
		t.Fatal(err)
	}
	if left := existing(t, rb, []string{one + ".b", registryName(one)}); len(left) != 2 {
		t.Errorf("after deleting group a, %v exist, want group b's queue and the registry", left)
	}
	if err := rb.DeleteSubscription(ctx, one, "b"); err != nil {
		t.Fatal(err)
	}
	if left := existing(t, rb, []string{one + ".a", one + ".b", registryName(one)}); len(left) > 0 {
		t.Errorf("after deleting both groups, %v exist", left)
	}

	testenv.DeleteRabbitMQ(t, url, []string{two + ".a", two + ".b"}, nil)
	if left := existing(t, rb, []string{two + ".a", two + ".b", registryName(two)}); len(left) > 0 {
		t.Errorf("after testenv.DeleteRabbitMQ, %v exist", left)
	}
}
