package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dlq"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	"github.com/queuekit/queuekit/middleware/retry"
)

var errBoom = errors.New("boom")

// failing counts its calls and fails each with err.
func failing(calls *atomic.Int32, err error) broker.Handler {
	return broker.HandlerFunc(func(context.Context, *broker.Message) error {
		calls.Add(1)
		return err
	})
}

func TestDeadLetterAfterMaxAttempts(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		if !e.B.Capabilities().AttemptCount {
			t.Skip("unsupported: the adapter counts no attempts")
		}
		topic := e.Topic("dlq")
		dead := e.Subscribe(t, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops"})
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "work"})
		var calls atomic.Int32
		var seen atomic.Pointer[broker.Message]
		h := dlq.New(e.Pub, dlq.Options{MaxAttempts: 3, OnDeadLetter: func(m *broker.Message, reason error) {
			if errors.Is(reason, errBoom) {
				seen.Store(m)
			}
		}})(failing(&calls, errBoom))
		e.Publish(t, topic, &broker.Message{ID: "m-1", Key: "k-1", Payload: []byte("payload\x00bytes"), Headers: map[string]string{"tenant": "acme"}})
		before := time.Now()
		stop := mwtest.Consume(t, sub, h, broker.ConsumeOptions{})

		d := mwtest.Receive(t, dead, 20*time.Second)
		got := d.Message()
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got.ID != "m-1" || got.Key != "k-1" || string(got.Payload) != "payload\x00bytes" || got.Header("tenant") != "acme" {
			t.Fatalf("dead letter lost identity: id %q key %q payload %q headers %v", got.ID, got.Key, got.Payload, got.Headers)
		}
		if r := got.Header(broker.HeaderDeadReason); !strings.Contains(r, "boom") {
			t.Errorf("reason header %q does not name the error", r)
		}
		if a := got.Header(broker.HeaderDeadAttempts); a != "3" {
			t.Errorf("attempts header %q, want 3", a)
		}
		if o := got.Header(broker.HeaderOriginalTopic); o != topic {
			t.Errorf("original topic header %q, want %q", o, topic)
		}
		first, err1 := time.Parse(time.RFC3339Nano, got.Header(broker.HeaderFirstFailure))
		last, err2 := time.Parse(time.RFC3339Nano, got.Header(broker.HeaderLastFailure))
		if err1 != nil || err2 != nil || first.After(last) || first.Before(before.Add(-time.Second)) {
			t.Errorf("failure times first %q last %q: %v %v", got.Header(broker.HeaderFirstFailure), got.Header(broker.HeaderLastFailure), err1, err2)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if seen.Load() == nil {
			t.Error("OnDeadLetter was not called")
		}
		if n := calls.Load(); n != 3 {
			t.Fatalf("handler ran %d times, want 3", n)
		}
		assertEmpty(t, sub) // the original was acked
	})
}

func TestPermanentErrorDeadLettersAtOnce(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("dlq-perm")
		dead := e.Subscribe(t, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops"})
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "work"})
		var calls atomic.Int32
		h := dlq.New(e.Pub, dlq.Options{MaxAttempts: 100})(failing(&calls, broker.Permanent(errBoom)))
		e.Publish(t, topic, &broker.Message{ID: "p-1"})
		stop := mwtest.Consume(t, sub, h, broker.ConsumeOptions{})
		d := mwtest.Receive(t, dead, 20*time.Second)
		_ = d.Ack(context.Background())
		if d.Message().ID != "p-1" {
			t.Fatalf("dead letter %q", d.Message().ID)
		}
		_ = stop()
		if calls.Load() != 1 {
			t.Fatalf("handler ran %d times, want 1: a permanent error is not retried", calls.Load())
		}
		assertEmpty(t, sub)
	})
}

func TestRetryInsideDatesTheFirstFailure(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("dlq-retry")
		dead := e.Subscribe(t, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops"})
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "work"})
		var calls atomic.Int32
		h := broker.Chain(
			dlq.New(e.Pub, dlq.Options{}), // no attempt limit of its own: retry decides
			retry.New(retry.Options{MaxAttempts: 3, Initial: 20 * time.Millisecond, NoJitter: true}),
		)(failing(&calls, errBoom))
		e.Publish(t, topic, &broker.Message{ID: "r-1"})
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{})
		d := mwtest.Receive(t, dead, 20*time.Second)
		_ = d.Ack(context.Background())
		m := d.Message()
		first, _ := time.Parse(time.RFC3339Nano, m.Header(broker.HeaderFirstFailure))
		last, _ := time.Parse(time.RFC3339Nano, m.Header(broker.HeaderLastFailure))
		if calls.Load() != 3 || last.Sub(first) < 60*time.Millisecond {
			t.Fatalf("%d calls, first failure %v, last %v: want 3 in-process attempts 20ms+40ms apart", calls.Load(), first, last)
		}
		if !strings.Contains(m.Header(broker.HeaderDeadReason), "gave up after 3 attempt(s): boom") {
			t.Fatalf("reason %q", m.Header(broker.HeaderDeadReason))
		}
	})
}

func TestNativeLeavesAttemptsToTheBroker(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		if !e.B.Capabilities().NativeDeadLetter {
			t.Skip("unsupported: no native dead-lettering")
		}
		topic := e.Topic("dlq-native")
		dead := e.Subscribe(t, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops"})
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "work", MaxAttempts: 2})
		e.Forget(t, dlq.Topic(topic), "work") // the adapter's own dead-letter queue
		var transient, permanent atomic.Int32
		var published atomic.Int32
		h := dlq.New(e.Pub, dlq.Options{MaxAttempts: 1, Native: true, OnDeadLetter: func(*broker.Message, error) { published.Add(1) }})(
			broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				if m.ID == "perm" {
					permanent.Add(1)
					return broker.Permanent(errBoom)
				}
				transient.Add(1)
				return errBoom
			}))
		e.Publish(t, topic, &broker.Message{ID: "trans"}, &broker.Message{ID: "perm"})
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{})
		got := map[string]bool{}
		for len(got) < 2 {
			d := mwtest.Receive(t, dead, 20*time.Second)
			got[d.Message().ID] = true
			_ = d.Ack(context.Background())
		}
		if transient.Load() != 2 || permanent.Load() != 1 || published.Load() != 1 {
			t.Fatalf("transient ran %d times (want 2: the broker's limit), permanent %d (want 1), dlq published %d (want 1: the permanent one)",
				transient.Load(), permanent.Load(), published.Load())
		}
	})
}

func TestPublishFailureLosesNothing(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		if !e.B.Capabilities().AttemptCount {
			t.Skip("unsupported: the adapter counts no attempts")
		}
		topic := e.Topic("dlq-pubfail")
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "work"})
		closed, err := e.B.NewPublisher(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		_ = closed.Close(context.Background()) // every dead-letter publish fails
		var maxAttempt atomic.Int32
		h := dlq.New(closed, dlq.Options{MaxAttempts: 1})(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if int32(m.Attempt) > maxAttempt.Load() {
				maxAttempt.Store(int32(m.Attempt))
			}
			return errBoom
		}))
		var mu sync.Mutex
		var errs []error
		e.Publish(t, topic, &broker.Message{ID: "x"})
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{NackDelay: 10 * time.Millisecond, OnError: func(_ *broker.Message, err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}})
		mwtest.Eventually(t, 20*time.Second, func() bool { return maxAttempt.Load() >= 3 },
			"the message was not redelivered after the dead-letter publish failed (max attempt %d)", maxAttempt.Load())
		mu.Lock()
		defer mu.Unlock()
		if !errors.Is(errs[0], errBoom) || !errors.Is(errs[0], broker.ErrClosed) {
			t.Fatalf("error %v: want the handler's error joined with the publish error", errs[0])
		}
	})
}

func TestRedrive(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("redrive")
		dead := e.Subscribe(t, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops", Prefetch: 64})
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "work"})
		// Dead-letter 12 messages through the middleware: poison ones fail
		// for good the first time round.
		var poison atomic.Bool
		poison.Store(true)
		var handled sync.Map
		h := dlq.New(e.Pub, dlq.Options{})(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if poison.Load() {
				return broker.Permanent(errBoom)
			}
			handled.Store(m.ID, m)
			return nil
		}))
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{Concurrency: 4})
		var msgs []*broker.Message
		for i := range 12 {
			kind := "keep"
			if i%2 == 1 {
				kind = "hold"
			}
			msgs = append(msgs, &broker.Message{ID: fmt.Sprintf("%s-%d", kind, i), Key: fmt.Sprintf("key-%d", i),
				Payload: []byte{byte(i)}, Headers: map[string]string{"kind": kind}})
		}
		e.Publish(t, topic, msgs...)

		// Wait until all 12 sit in the dead-letter topic: a first redrive
		// with a filter that refuses everything counts them.
		mwtest.Eventually(t, 20*time.Second, func() bool {
			p, err := dlq.Redrive(context.Background(), dead, e.Pub, dlq.RedriveOptions{Idle: 200 * time.Millisecond,
				Filter: func(*broker.Message) bool { return false }})
			return err == nil && p.Skipped == 12 && p.Moved == 0
		}, "the 12 dead letters never all arrived")
		poison.Store(false)

		// Limit: 2 of the "keep" ones.
		keep := func(m *broker.Message) bool { return m.Header("kind") == "keep" }
		p, err := dlq.Redrive(context.Background(), dead, e.Pub, dlq.RedriveOptions{Limit: 2, Filter: keep, Idle: 300 * time.Millisecond})
		if err != nil || p.Moved != 2 {
			t.Fatalf("limited redrive: %+v, %v; want 2 moved", p, err)
		}
		// Filter: the other 4 "keep" ones, with progress reports.
		var reports []dlq.Progress
		p, err = dlq.Redrive(context.Background(), dead, e.Pub, dlq.RedriveOptions{Filter: keep, Idle: 300 * time.Millisecond,
			ProgressEvery: 2, Progress: func(p dlq.Progress) { reports = append(reports, p) }})
		if err != nil || p.Moved != 4 || p.Skipped != 6 {
			t.Fatalf("filtered redrive: %+v, %v; want 4 moved and the 6 others skipped", p, err)
		}
		if len(reports) < 3 || !reports[len(reports)-1].Done || reports[len(reports)-1].Moved != 4 {
			t.Fatalf("progress reports %+v: want periodic ones and a final Done with Moved 4", reports)
		}
		// All: the 6 held ones remain.
		p, err = dlq.Redrive(context.Background(), dead, e.Pub, dlq.RedriveOptions{Idle: 300 * time.Millisecond})
		if err != nil || p.Moved != 6 {
			t.Fatalf("redrive all: %+v, %v; want the 6 that were left", p, err)
		}

		mwtest.Eventually(t, 20*time.Second, func() bool {
			n := 0
			handled.Range(func(any, any) bool { n++; return true })
			return n == 12
		}, "not every redriven message was handled")
		for i, want := range msgs {
			v, _ := handled.Load(want.ID)
			got := v.(*broker.Message)
			if got.Key != want.Key || len(got.Payload) != 1 || got.Payload[0] != byte(i) || got.Header("kind") != want.Header("kind") {
				t.Errorf("redriven %s lost identity: key %q payload %v headers %v", want.ID, got.Key, got.Payload, got.Headers)
			}
			if got.Header(dlq.HeaderRedrives) != "1" || got.Header(broker.HeaderDeadReason) != "" || got.Header(broker.HeaderFirstFailure) == "" {
				t.Errorf("redriven %s headers %v: want redrives 1, no dead reason, first failure kept", want.ID, got.Headers)
			}
		}
	})
}

// assertEmpty checks that nothing is left to deliver on sub.
func assertEmpty(t *testing.T, sub *broker.Subscriber) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if d, err := sub.Receive(ctx); err == nil {
		_ = d.Nack(context.Background(), 0)
		t.Fatalf("message %s (attempt %d) is still there: the original was not acked", d.Message().ID, d.Message().Attempt)
	}
}
