package middleware_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dlq"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	qkrecover "github.com/queuekit/queuekit/middleware/recover"
	"github.com/queuekit/queuekit/middleware/retry"
)

// TestDefaultStack runs the orders scenario through the default stack:
// duplicates, transient failures, panics and poison messages; every good
// message is handled exactly once and the poison ones end in the DLQ.
func TestDefaultStack(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		topic := e.Topic("stack")
		dead := e.Subscribe(t, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops"})
		sub := e.Subscribe(t, broker.SubscriberOptions{Topic: topic, Group: "billing"})
		const n, poison = 200, 5
		ledger := conformance.NewLedger()
		var stats dedupe.Stats
		var panics, deadLettered atomic.Int32
		h := middleware.Default(middleware.Options{
			Publisher:   e.Pub,
			Store:       dedupe.NewMemoryStore(dedupe.MemoryOptions{}),
			MaxAttempts: 3,
			Retry:       &retry.Options{Mode: retry.Redelivery, MaxAttempts: 3, Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
			Dedupe:      dedupe.Options{Stats: &stats, InFlightDelay: 20 * time.Millisecond},
			DLQ:         dlq.Options{OnDeadLetter: func(*broker.Message, error) { deadLettered.Add(1) }},
			Recover:     qkrecover.Options{OnPanic: func(*broker.Message, *broker.PanicError) { panics.Add(1) }},
		})(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			ledger.Delivered(m.ID)
			switch {
			case strings.HasPrefix(m.ID, "poison"):
				return fmt.Errorf("order %s is malformed", m.ID)
			case strings.HasPrefix(m.ID, "flaky") && m.Attempt <= 1:
				return fmt.Errorf("downstream unavailable")
			case strings.HasPrefix(m.ID, "panicky") && m.Attempt <= 1:
				panic("nil map in order " + m.ID)
			}
			ledger.Handled(m.ID)
			return nil
		}))
		if err := middleware.Check(h); err != nil {
			t.Fatalf("Default fails its own check: %v", err)
		}

		var msgs []*broker.Message
		for i := range n {
			id := fmt.Sprintf("ok-%d", i)
			switch {
			case i < poison:
				id = fmt.Sprintf("poison-%d", i)
			case i%7 == 0:
				id = fmt.Sprintf("flaky-%d", i)
			case i%13 == 0:
				id = fmt.Sprintf("panicky-%d", i)
			}
			m := &broker.Message{ID: id, Key: fmt.Sprintf("order-%d", i%20), Payload: []byte(id)}
			msgs = append(msgs, m)
			if !strings.HasPrefix(id, "poison") {
				ledger.Published(id, m.Key)
			}
			if i%10 == 5 { // published twice on purpose
				msgs = append(msgs, &broker.Message{ID: id, Key: m.Key, Payload: m.Payload})
			}
		}
		e.Publish(t, topic, msgs...)
		mwtest.Consume(t, sub, h, broker.ConsumeOptions{Concurrency: 4})

		mwtest.Eventually(t, 30*time.Second, func() bool {
			r := ledger.Report()
			return r.Handled == n-poison && deadLettered.Load() == poison && stats.Snapshot().Duplicates == 20
		}, "not done: ledger %+v, dead-lettered %d, dedupe %+v",
			mwtest.Late(func() any { return ledger.Report() }), mwtest.Late(func() any { return deadLettered.Load() }),
			mwtest.Late(func() any { return stats.Snapshot() }))
		r := ledger.Report()
		if len(r.Lost) != 0 || r.Duplicates != 0 {
			t.Fatalf("lost %v, handled twice %d", r.Lost, r.Duplicates)
		}
		if panics.Load() == 0 {
			t.Fatal("no panic was recovered")
		}
		got := map[string]bool{}
		for len(got) < poison {
			d := mwtest.Receive(t, dead, 10*time.Second)
			got[d.Message().ID] = true
			_ = d.Ack(context.Background())
		}
		for i := range poison {
			if !got[fmt.Sprintf("poison-%d", i)] {
				t.Fatalf("dead letters %v lack poison-%d", got, i)
			}
		}
	})
}

// stage stands for a queuekit middleware by name.
func stage(name string) broker.Middleware {
	return func(next broker.Handler) broker.Handler { return named{name, next} }
}

type named struct {
	name string
	next broker.Handler
}

func (s named) Handle(ctx context.Context, m *broker.Message) error { return s.next.Handle(ctx, m) }
func (s named) Stage() string                                       { return s.name }
func (s named) Unwrap() broker.Handler                              { return s.next }

func TestCheck(t *testing.T) {
	noop := broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	pub, err := memory.New(memory.Options{}).NewPublisher(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h := middleware.Default(middleware.Options{Publisher: pub, Store: dedupe.NewMemoryStore(dedupe.MemoryOptions{}), Timeout: time.Second,
		Observe: stage("otel")})(noop)
	if got := strings.Join(middleware.Stages(h), " "); got != "otel dlq retry dedupe timeout recover" {
		t.Fatalf("Default stages: %s", got)
	}
	if err := middleware.Check(h); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		chain []string
		want  string // "" for no complaint
	}{
		{[]string{"dlq", "retry", "dedupe", "recover"}, ""},
		{[]string{"recover", "otel", "dlq", "retry", "recover"}, ""}, // a second recover outside is fine
		{[]string{"dedupe", "retry", "dlq"}, "dedupe wraps dlq"},
		{[]string{"recover", "dlq", "retry"}, "recover wraps dlq"},
		{[]string{"dlq", "recover", "retry"}, "recover wraps retry"},
	} {
		var mws []broker.Middleware
		for _, s := range tc.chain {
			mws = append(mws, stage(s))
		}
		err := middleware.Check(broker.Chain(mws...)(noop))
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Check(%v) = %v, want %q", tc.chain, err, tc.want)
		}
	}
}
