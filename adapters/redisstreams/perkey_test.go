package redisstreams_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// orderCheck records, per key, the sequence numbers handled, and counts a
// message handled for the first time after a later one of its key.
type orderCheck struct {
	mu        sync.Mutex
	last      map[string]int
	seen      map[string]bool
	by        map[string]int // handled messages per subscriber
	reordered []string
	dups      int // handlings of a message handled before
	handled   int
	done      chan struct{}
	want      int
}

func newOrderCheck(want int) *orderCheck {
	return &orderCheck{last: map[string]int{}, seen: map[string]bool{}, by: map[string]int{}, done: make(chan struct{}), want: want}
}

func (o *orderCheck) handle(sub string, m *broker.Message) {
	key, seqText, _ := strings.Cut(string(m.Payload), "/")
	seq, _ := strconv.Atoi(seqText)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen[m.ID] {
		o.dups++
		return
	}
	o.seen[m.ID] = true
	if last, ok := o.last[key]; ok && seq < last {
		o.reordered = append(o.reordered, fmt.Sprintf("%s/%d after %d", key, seq, last))
	}
	o.last[key] = max(o.last[key], seq)
	o.by[sub]++
	o.handled++
	if o.handled == o.want {
		close(o.done)
	}
}

func keyed(keys, n int) []*broker.Message {
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		k := "key-" + strconv.Itoa(i%keys)
		msgs[i] = &broker.Message{Key: k, Payload: []byte(k + "/" + strconv.Itoa(i/keys))}
	}
	return msgs
}

// Several PerKey subscribers of one group share a topic's shards, each
// leasing its fair share, and every key's messages are handled in publish
// order, with concurrent handlers, while the shards move: a second
// subscriber joins (the first gives up half of its shards once their
// deliveries are settled), a third joins, and the first leaves (its shards
// go to the third). Order and duplicates are measured per message.
func TestPerKeySharedShards(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "shards=4")
	topic := name("perkey")
	const n, keys = 3000, 32
	check := newOrderCheck(n)
	o := broker.SubscriberOptions{Topic: topic, Group: "g", Ordering: semantics.PerKey, AckTimeout: 600 * time.Millisecond}
	type consumer struct {
		cancel context.CancelFunc
		done   chan error
	}
	start := func(label string) consumer {
		s := newSubscriber(t, b, o)
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- broker.Consume(cctx, s, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
				check.handle(label, m)
				time.Sleep(200 * time.Microsecond)
				return nil
			}), broker.ConsumeOptions{Concurrency: 4})
			_ = s.Close(context.Background())
		}()
		return consumer{cancel, done}
	}
	// owners waits until the shards are leased to want distinct consumers.
	owners := func(want int) {
		t.Helper()
		for {
			bl, err := b.Backlog(ctx, topic, "g")
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for _, part := range bl.Parts {
				if part.Owner != "" {
					got[part.Owner] = true
				}
			}
			if len(got) == want && len(bl.Parts) == 4 {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the shards did not go to %d subscribers: backlog %+v", want, bl)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	p := newPublisher(t, b)
	msgs := keyed(keys, n)
	publish := func(from, to int) {
		t.Helper()
		for i := from; i < to; i += 100 {
			if err := p.Publish(ctx, topic, msgs[i:i+100]...); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := start("a")
	owners(1)
	publish(0, 1000)
	bb := start("b")
	owners(2) // a drained two shards and b took them, while a was busy
	publish(1000, 2000)
	c := start("c")
	a.cancel()
	if err := <-a.done; err != nil {
		t.Errorf("Consume a: %v", err)
	}
	publish(2000, n)
	select {
	case <-check.done:
	case <-ctx.Done():
		t.Fatalf("handled %d of %d", check.handled, n)
	}
	bb.cancel()
	c.cancel()
	<-bb.done
	<-c.done
	check.mu.Lock()
	defer check.mu.Unlock()
	if len(check.reordered) > 0 {
		t.Errorf("%d messages handled after a later one of their key: %v", len(check.reordered), check.reordered[:min(5, len(check.reordered))])
	}
	t.Logf("handled per subscriber: %v", check.by)
	if check.dups > 0 {
		// A shard changes hands only once its deliveries are settled and
		// their acks sent, so nothing is handled twice here.
		t.Errorf("%d messages handled twice across the hand-overs", check.dups)
	}
	if check.by["a"] == 0 || check.by["b"] == 0 || check.by["c"] == 0 {
		t.Errorf("the shards were not shared: handled per subscriber %v", check.by)
	}
}

// A PerKey subscriber that stops renewing (its process died: simulated by
// the lease expiring while it holds deliveries) loses its shard to a
// standby, which first takes over the pending entries, in order.
func TestPerKeyStandbyTakesOver(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("standby")
	o := broker.SubscriberOptions{Topic: topic, Group: "g", Ordering: semantics.PerKey, AckTimeout: 300 * time.Millisecond}
	first := newSubscriber(t, b, o)
	p := newPublisher(t, b)
	msgs := keyed(1, 10)
	if err := p.Publish(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	// first holds 3 deliveries, unsettled, and closes: they are given back.
	for i := range 3 {
		if d := receive(t, ctx, first); d.Message().ID != msgs[i].ID {
			t.Fatalf("delivery %d is %s, want %s", i, d.Message().ID, msgs[i].ID)
		}
	}
	standby := newSubscriber(t, b, o)
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for i, want := range msgs {
		d := receive(t, ctx, standby)
		if d.Message().ID != want.ID {
			t.Fatalf("the standby's delivery %d is %s (%s), want %s", i, d.Message().ID, d.Message().Payload, want.ID)
		}
		if i < 3 && d.Message().Attempt != 2 {
			t.Errorf("given-back delivery %d has Attempt %d, want 2", i, d.Message().Attempt)
		}
		_ = d.Ack(ctx)
	}
}
