package sqs_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	awstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// waitDepth polls queue's depth until ok says yes (external broker state:
// polling with a deadline is the only way).
func waitDepth(t *testing.T, b *qsqs.Broker, queue string, ok func(qsqs.Depth) bool) qsqs.Depth {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		d, err := b.QueueDepth(context.Background(), queue)
		if err != nil {
			t.Fatal(err)
		}
		if ok(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %s depth stayed %+v", queue, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Messages that exhaust MaxAttempts land in the native dead-letter queue,
// and Redrive moves them back byte for byte, deleting each from the
// dead-letter queue only once its send succeeded.
func TestDeadLetterThenRedrivePreservesMessages(t *testing.T) {
	t.Parallel()
	b := open(t, "")
	tp := topic(t)
	opts := broker.SubscriberOptions{Topic: tp, MaxAttempts: 2, AckTimeout: 5 * time.Second}
	main := subscribe(t, b, opts)
	dlq := b.DeadLetterQueue(opts)
	if want := qsqs.QueueName(tp+".dlq", false); dlq != want {
		t.Fatalf("DeadLetterQueue = %q, want %q", dlq, want)
	}
	headers := map[string]string{"trace": "t-1"}
	for i := range 12 {
		headers[fmt.Sprintf("x-%d", i)] = fmt.Sprint(i)
	}
	msgs := []*broker.Message{
		{Key: "k", Payload: []byte{0, 1, 2, 0xff}, Headers: map[string]string{"kind": "binary"}},
		{Payload: []byte("many headers"), Headers: headers},
		{Key: "text", Payload: []byte(`{"order":42}`)},
	}
	p := publisher(t, b)
	if err := p.Publish(context.Background(), tp, msgs...); err != nil {
		t.Fatal(err)
	}
	attempts := map[string][]int{}
	for range len(msgs) * 2 {
		d := receive(t, main, 10*time.Second)
		attempts[d.Message().ID] = append(attempts[d.Message().ID], d.Message().Attempt)
		if err := d.Nack(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range msgs {
		if got := attempts[m.ID]; len(got) != 2 || got[0] != 1 || got[1] != 2 {
			t.Errorf("%s delivered with attempts %v, want [1 2]", m.ID, got)
		}
	}
	// The pollers' next receive makes SQS move them (maxReceiveCount 2).
	waitDepth(t, b, dlq, func(d qsqs.Depth) bool { return d.Visible == int64(len(msgs)) })
	if err := main.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d, _ := b.Depth(context.Background(), tp, ""); d.Total() != 0 {
		t.Errorf("source queue depth after dead-lettering = %+v, want empty", d)
	}

	moved, err := b.Redrive(context.Background(), dlq, b.SubscriptionQueue(tp, ""), qsqs.RedriveOptions{})
	if err != nil || moved != len(msgs) {
		t.Fatalf("Redrive = %d, %v; want %d moved", moved, err, len(msgs))
	}
	if d, _ := b.QueueDepth(context.Background(), dlq); d.Total() != 0 {
		t.Errorf("dead-letter queue after redrive = %+v, want empty", d)
	}
	again := subscribe(t, b, broker.SubscriberOptions{Topic: tp})
	want := map[string]*broker.Message{}
	for _, m := range msgs {
		want[m.ID] = m
	}
	for range msgs {
		d := receive(t, again, 10*time.Second)
		got, w := d.Message(), want[d.Message().ID]
		if w == nil {
			t.Fatalf("redriven message %q is not one of those published", got.ID)
		}
		if !bytes.Equal(got.Payload, w.Payload) || got.Key != w.Key || !got.PublishedAt.Equal(w.PublishedAt) || len(got.Headers) != len(w.Headers) {
			t.Errorf("redriven %s = payload %q key %q at %v headers %v; want %q %q %v %v", got.ID, got.Payload, got.Key, got.PublishedAt, got.Headers, w.Payload, w.Key, w.PublishedAt, w.Headers)
		}
		for k, v := range w.Headers {
			if got.Headers[k] != v {
				t.Errorf("redriven %s: header %s = %q, want %q", got.ID, k, got.Headers[k], v)
			}
		}
		_ = d.Ack(context.Background())
	}
	if n, err := b.Redrive(context.Background(), dlq, b.SubscriptionQueue(tp, ""), qsqs.RedriveOptions{}); n != 0 || err != nil {
		t.Errorf("Redrive of an empty dead-letter queue = %d, %v", n, err)
	}
}

// A message whose send back fails stays in the dead-letter queue.
func TestRedriveKeepsWhatItCouldNotSend(t *testing.T) {
	t.Parallel()
	b := open(t, "")
	tp := topic(t)
	src, err := b.EnsureQueue(context.Background(), qsqs.QueueName(tp, false), qsqs.QueueSpec{})
	if err != nil {
		t.Fatal(err)
	}
	dlqName := qsqs.QueueName(tp+"-dead", false)
	p := publisher(t, b)
	small := &broker.Message{Payload: []byte("fits")}
	big := &broker.Message{Payload: bytes.Repeat([]byte("b"), 3000)}
	if err := p.Publish(context.Background(), dlqName, small, big); err != nil {
		t.Fatal(err)
	}
	// The source queue takes at most 1 KiB: big cannot go back.
	if _, err := b.Client().SetQueueAttributes(context.Background(), &awssqs.SetQueueAttributesInput{
		QueueUrl: &src.URL, Attributes: map[string]string{"MaximumMessageSize": "1024"},
	}); err != nil {
		t.Fatal(err)
	}
	moved, err := b.Redrive(context.Background(), dlqName, src.URL, qsqs.RedriveOptions{})
	if moved != 1 || err == nil || broker.KindOf(err) != semantics.InvalidArgument {
		t.Fatalf("Redrive = %d, %v; want 1 moved and an invalid-argument error for the big one", moved, err)
	}
	d := waitDepth(t, b, dlqName, func(d qsqs.Depth) bool { return d.Visible == 1 })
	if d.InFlight != 0 {
		t.Errorf("the unsent message is still hidden: %+v", d)
	}
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: dlqName})
	if got := receive(t, sub, 10*time.Second).Message(); got.ID != big.ID || len(got.Payload) != len(big.Payload) {
		t.Errorf("left in the dead-letter queue: %s (%d bytes), want %s", got.ID, len(got.Payload), big.ID)
	}
	srcSub := subscribe(t, b, broker.SubscriberOptions{Topic: tp})
	if got := receive(t, srcSub, 10*time.Second).Message(); got.ID != small.ID {
		t.Errorf("moved %s, want %s", got.ID, small.ID)
	}
}

func TestEnsureQueueWiresTheRedrivePolicy(t *testing.T) {
	t.Parallel()
	b := open(t, "")
	name := qsqs.QueueName(topic(t), true)
	info, err := b.EnsureQueue(context.Background(), name, qsqs.QueueSpec{FIFO: true, DeadLetterQueue: name[:len(name)-5] + "-dlq", MaxReceiveCount: 4})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Created || info.DeadLetterARN == "" || info.DeadLetterURL[len(info.DeadLetterURL)-5:] != ".fifo" {
		t.Fatalf("EnsureQueue = %+v, want a created queue with a FIFO dead-letter queue", info)
	}
	out, err := b.Client().GetQueueAttributes(context.Background(), &awssqs.GetQueueAttributesInput{
		QueueUrl: &info.URL, AttributeNames: []awstypes.QueueAttributeName{"RedrivePolicy", "FifoQueue"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`{"deadLetterTargetArn":%q,"maxReceiveCount":"4"}`, info.DeadLetterARN)
	if out.Attributes["RedrivePolicy"] != want || out.Attributes["FifoQueue"] != "true" {
		t.Errorf("attributes = %v, want RedrivePolicy %s on a FIFO queue", out.Attributes, want)
	}
	again, err := b.EnsureQueue(context.Background(), name, qsqs.QueueSpec{FIFO: true})
	if err != nil || again.Created || again.URL != info.URL {
		t.Errorf("second EnsureQueue = %+v, %v; want the same queue, not created", again, err)
	}
	if _, err := b.EnsureQueue(context.Background(), name, qsqs.QueueSpec{DeadLetterQueue: "x"}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("EnsureQueue with a dead-letter queue and no MaxReceiveCount = %v, want invalid argument", err)
	}
}

// On FIFO queues (queue mode) messages of one key arrive in publish order,
// and the message ID deduplicates.
func TestFIFOQueueKeepsKeyOrderAndDeduplicates(t *testing.T) {
	t.Parallel()
	b := open(t, "fifo=true")
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Ordering: semantics.PerKey})
	p := publisher(t, b)
	led := semantics.NewLedger()
	const n = 60
	var msgs []*broker.Message
	for i := range n {
		m := &broker.Message{ID: fmt.Sprintf("m%03d", i), Key: fmt.Sprint("key", i%3), Payload: []byte(fmt.Sprint(i))}
		msgs = append(msgs, m)
		led.Published(m.ID, m.Key)
	}
	for i := 0; i < n; i += 7 {
		if err := p.Publish(context.Background(), tp, msgs[i:min(i+7, n)]...); err != nil {
			t.Fatal(err)
		}
	}
	// Same ID again: SQS drops it (deduplication by message ID).
	if err := p.Publish(context.Background(), tp, &broker.Message{ID: "m000", Key: "key0", Payload: []byte("dup")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			led.Delivered(m.ID)
			led.Handled(m.ID)
			if r := led.Report(); r.Handled == n {
				cancel()
			}
			return nil
		}), broker.ConsumeOptions{Ordering: semantics.PerKey, Concurrency: 3})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		cancel()
		<-done
		t.Fatalf("timed out: %v", led.Report())
	}
	if r := led.Report(); !r.OK() {
		t.Errorf("FIFO consumption: %v", r)
	}
	nothing(t, sub, time.Second) // the duplicate of m000 never comes
}
