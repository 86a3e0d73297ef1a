package redisstreams_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/adapters/redisstreams"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Declare creates the stream and the groups idempotently. The first groups
// of a stream also get what reached it while it had none (here an entry of
// another producer); a group declared later gets only what comes after it.
func TestDeclare(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	c := rawClient(t)
	topic := name("declare")
	early, err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream(topic), Values: []any{"_id", "early", "_body", "before any group"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := b.Declare(ctx, topic, "first", "second"); err != nil {
			t.Fatal(err)
		}
	}
	groups, err := c.XInfoGroups(ctx, stream(topic)).Result()
	if err != nil || len(groups) != 2 {
		t.Fatalf("XINFO GROUPS = %v, %v; want the 2 declared groups", groups, err)
	}
	if err := b.Declare(ctx, topic, "late"); err != nil {
		t.Fatal(err)
	}
	m := &broker.Message{Payload: []byte("after")}
	if err := newPublisher(t, b).Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"first", "second"} {
		s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: g})
		for _, want := range []string{"early", m.ID} {
			d := receive(t, ctx, s)
			if d.Message().ID != want {
				t.Errorf("group %s got %s, want %s", g, d.Message().ID, want)
			}
			_ = d.Ack(ctx)
		}
	}
	s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "late"})
	if d := receive(t, ctx, s); d.Message().ID != m.ID {
		t.Errorf("group late got %s (entry %s was there before it), want %s", d.Message().ID, early, m.ID)
	}
}

// Publish to a topic without a group fails with ErrNoGroup and writes
// nothing; once a group exists it goes through.
func TestNoGroupRefused(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "shards=2")
	c := rawClient(t)
	topic := name("nogroup")
	p := newPublisher(t, b)
	err := p.Publish(ctx, topic, &broker.Message{Payload: []byte("x")})
	if !errors.Is(err, broker.ErrNoGroup) || broker.KindOf(err) != semantics.NotFound {
		t.Fatalf("Publish without a group = %v, want ErrNoGroup (not found)", err)
	}
	if n, _ := c.Exists(ctx, stream(topic)).Result(); n != 0 {
		t.Errorf("the refused Publish created the stream")
	}
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, topic, &broker.Message{Payload: []byte("x")}); err != nil {
		t.Errorf("Publish after Declare = %v", err)
	}
}

// Names are checked before any I/O: a broker whose server does not exist
// answers at once with InvalidArgument errors.
func TestNamesCheckedBeforeIO(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: nowhere, MaxRetries: -1, DialTimeout: 5 * time.Second})
	defer c.Close()
	rb, err := redisstreams.New(c, redisstreams.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(rb)
	p, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("t", redisstreams.MaxNameLen+1)
	for _, bad := range []string{"a b", "x{y}", "tab\tname", long, "new\nline"} {
		start := time.Now()
		checks := map[string]error{
			"Declare topic":       b.Declare(ctx, bad, "g"),
			"Declare group":       b.Declare(ctx, "ok", bad),
			"Publish":             p.Publish(ctx, bad, &broker.Message{}),
			"Backlog":             func() error { _, err := b.Backlog(ctx, bad, "g"); return err }(),
			"DeleteTopic":         rb.DeleteTopic(ctx, bad),
			"NewSubscriber topic": func() error { _, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: bad}); return err }(),
			"NewSubscriber group": func() error {
				_, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "ok", Group: bad})
				return err
			}(),
			"NewSubscriber dlq": func() error {
				_, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "ok", MaxAttempts: 2, DeadLetterTopic: bad})
				return err
			}(),
			"HasGroup (driver)":    func() error { _, err := rb.HasGroup(ctx, bad); return err }(),
			"NewSubscriber driver": func() error { _, err := rb.NewSubscriber(ctx, driverOpts(bad)); return err }(),
		}
		for what, err := range checks {
			if broker.KindOf(err) != semantics.InvalidArgument {
				t.Errorf("%s with name %.20q = %v, want an invalid argument error", what, bad, err)
			}
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("name %.20q: the checks took %v, as if they had tried the network", bad, d)
		}
	}
}

func TestAs(t *testing.T) {
	b := openBroker(t)
	var uc redis.UniversalClient
	if !b.As(&uc) || uc == nil {
		t.Fatal("As(*redis.UniversalClient) = false")
	}
	var rc *redis.Client
	if !b.As(&rc) || rc != uc {
		t.Errorf("As(**redis.Client) = false, or another client")
	}
	var cc *redis.ClusterClient
	if b.As(&cc) {
		t.Errorf("As(**redis.ClusterClient) = true on a single-node client")
	}
	if driverOf(t, b).Client() != uc {
		t.Errorf("Client() is not the client As gave")
	}
	if err := uc.Ping(testCtx(t)).Err(); err != nil {
		t.Errorf("the client from As does not work: %v", err)
	}
}

// Under AtMostOnce, Ack returns once the entry left the group's pending
// list; under AtLeastOnce the ack goes with the next pipeline, and Close
// sends what is left.
func TestAckRecorded(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	c := rawClient(t)
	for _, g := range []semantics.Guarantee{semantics.AtMostOnce, semantics.AtLeastOnce} {
		topic := name("ack")
		s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Guarantee: g})
		p := newPublisher(t, b)
		if err := p.Publish(ctx, topic, &broker.Message{Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		d := receive(t, ctx, s)
		if n := pending(t, c, topic, "g"); n != 1 {
			t.Fatalf("%v: %d pending before Ack, want 1", g, n)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		if g == semantics.AtMostOnce {
			if n := pending(t, c, topic, "g"); n != 0 {
				t.Errorf("AtMostOnce: %d pending right after Ack returned, want 0", n)
			}
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if n := pending(t, c, topic, "g"); n != 0 {
			t.Errorf("%v: %d pending after Ack and Close, want 0", g, n)
		}
	}
}

func pending(t testing.TB, c *redis.Client, topic, group string) int64 {
	t.Helper()
	p, err := c.XPending(context.Background(), stream(topic), group).Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

// Under AtMostOnce, an Ack of a delivery that another consumer claimed
// after the ack timeout fails when the other acked first: only one of them
// handles the message.
func TestAtMostOnceAckAfterClaimFails(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("amo-claim")
	o := broker.SubscriberOptions{Topic: topic, Group: "g", Guarantee: semantics.AtMostOnce, AckTimeout: 100 * time.Millisecond}
	slow := newSubscriber(t, b, o)
	if err := newPublisher(t, b).Publish(ctx, topic, &broker.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	first := receive(t, ctx, slow)
	other := newSubscriber(t, b, o)
	second := receive(t, ctx, other) // claimed after the ack timeout
	if second.Message().ID != first.Message().ID || second.Message().Attempt != 2 {
		t.Fatalf("the claimed delivery is %s attempt %d, want %s attempt 2", second.Message().ID, second.Message().Attempt, first.Message().ID)
	}
	if err := second.Ack(ctx); err != nil {
		t.Fatalf("Ack of the claimed delivery: %v", err)
	}
	if err := first.Ack(ctx); err == nil {
		t.Error("Ack of the delivery claimed away and acked = nil: both consumers would handle the message")
	}
}

// A subscriber asking for another ordering than its group's is refused.
func TestOrderingMismatchRefused(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "shards=2")
	topic := name("mode")
	newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Ordering: semantics.PerKey})
	_, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "g"})
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "ordering:g") {
		t.Fatalf("an unordered subscriber in a PerKey group = %v, want unsupported naming the field to reset", err)
	}
	newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "other"}) // another group may differ
}

// A message nacked on its MaxAttempts-th delivery is dead-lettered with its
// ID, key, payload and headers, the reason, the attempts and the original
// topic; the original is acked.
func TestDeadLetterAfterNacks(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	c := rawClient(t)
	topic := name("dlq")
	s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: 2})
	m := &broker.Message{Key: "k", Payload: []byte{0, 1, 2}, Headers: map[string]string{"h": "v"}}
	if err := newPublisher(t, b).Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 2; attempt++ {
		d := receive(t, ctx, s)
		if d.Message().Attempt != attempt {
			t.Fatalf("delivered with Attempt %d, want %d", d.Message().Attempt, attempt)
		}
		if err := d.Nack(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	dlq := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic + ".dlq", Group: "g"})
	d := receive(t, ctx, dlq)
	n := d.Message()
	if n.ID != m.ID || n.Key != "k" || string(n.Payload) != "\x00\x01\x02" || n.Header("h") != "v" ||
		n.Header(broker.HeaderDeadReason) != "nacked on attempt 2 (MaxAttempts 2)" ||
		n.Header(broker.HeaderDeadAttempts) != "2" || n.Header(broker.HeaderOriginalTopic) != topic {
		t.Errorf("dead letter = %+v", n)
	}
	if n := pending(t, c, topic, "g"); n != 0 {
		t.Errorf("%d entries still pending on the original topic, want 0 (dead letters are acked)", n)
	}
}

// A message whose MaxAttempts-th delivery timed out is dead-lettered by the
// consumer that finds it: two subscribers that never settle take it from
// each other after the ack timeout, until its second delivery times out.
func TestDeadLetterAfterTimeouts(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("dlq-timeout")
	o := broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: 2, AckTimeout: 150 * time.Millisecond}
	subs := []*broker.Subscriber{newSubscriber(t, b, o), newSubscriber(t, b, o)}
	m := &broker.Message{Payload: []byte("slow")}
	if err := newPublisher(t, b).Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	attempts := make(chan int, 8)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := s.Receive(rctx)
				if err != nil {
					return
				}
				attempts <- d.Message().Attempt // never settled
			}
		}()
	}
	dlq := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic + ".dlq", Group: "g"})
	d := receive(t, ctx, dlq)
	if d.Message().ID != m.ID || d.Message().Header(broker.HeaderDeadReason) != "ack timeout passed on attempt 2 (MaxAttempts 2)" {
		t.Errorf("dead letter = %+v", d.Message())
	}
	cancel()
	wg.Wait()
	close(attempts)
	var seen []int
	for a := range attempts {
		seen = append(seen, a)
	}
	if len(seen) != 2 || seen[0] != 1 || seen[1] != 2 {
		t.Errorf("delivered with attempts %v before the dead letter, want [1 2]", seen)
	}
}

// A nack delay longer than the ack timeout holds too: the entry waits in
// the delay set, and no claim of timed-out entries takes it early — neither
// by its subscriber nor by another one of the group.
func TestNackDelayLongerThanAckTimeout(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("delay")
	o := broker.SubscriberOptions{Topic: topic, Group: "g", AckTimeout: 100 * time.Millisecond}
	subs := []*broker.Subscriber{newSubscriber(t, b, o), newSubscriber(t, b, o)}
	if err := newPublisher(t, b).Publish(ctx, topic, &broker.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *broker.Delivery, 4)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, s := range subs {
		go func() {
			for {
				d, err := s.Receive(rctx)
				if err != nil {
					return
				}
				got <- d
			}
		}()
	}
	d := <-got
	const delay = 1200 * time.Millisecond
	nackedAt := time.Now()
	if err := d.Nack(ctx, delay); err != nil {
		t.Fatal(err)
	}
	bl, err := b.Backlog(ctx, topic, "g")
	if err != nil || bl.Delayed != 1 || bl.InFlight != 0 || bl.Pending != 0 {
		t.Errorf("Backlog while delayed = %+v, %v; want 1 delayed", bl, err)
	}
	var again *broker.Delivery
	select {
	case again = <-got:
	case <-ctx.Done():
		t.Fatal("not redelivered")
	}
	if since := time.Since(nackedAt); since < delay-5*time.Millisecond {
		t.Errorf("redelivered %v after Nack(%v)", since, delay)
	}
	if again.Message().Attempt != 2 {
		t.Errorf("redelivered with Attempt %d, want 2", again.Message().Attempt)
	}
	_ = again.Ack(ctx)
}

func TestBacklog(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "shards=2")
	topic := name("backlog")
	s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 3})
	msgs := make([]*broker.Message, 10)
	for i := range msgs {
		msgs[i] = &broker.Message{Key: strconv.Itoa(i), Payload: []byte("x")}
	}
	if err := newPublisher(t, b).Publish(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	var ds []*broker.Delivery
	for range 3 {
		ds = append(ds, receive(t, ctx, s))
	}
	if err := ds[0].Nack(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	want := func(bl broker.Backlog) bool {
		return bl.Pending+bl.InFlight+bl.Delayed == 10 && bl.Delayed == 1 && bl.InFlight >= 2 && bl.Consumers == 1 && len(bl.Parts) == 2
	}
	var bl broker.Backlog
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		// The subscriber may read ahead into its prefetch room meanwhile.
		if bl, err = b.Backlog(ctx, topic, "g"); err != nil || want(bl) {
			break
		}
	}
	if err != nil || !want(bl) {
		t.Errorf("Backlog = %+v, %v; want 10 in all, 1 delayed, >= 2 in flight, 1 consumer, 2 parts", bl, err)
	}
	if _, err := b.Backlog(ctx, topic, "nope"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Backlog of a missing group = %v, want not found", err)
	}
	if _, err := b.Backlog(ctx, name("missing"), "g"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Backlog of a missing topic = %v, want not found", err)
	}
}

// A partial failure names the messages that failed; the others are in
// the stream. Shard 1 of the topic is made a string key, so XADD fails
// there (WRONGTYPE) and works on shard 0.
func TestPublishPartialFailure(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "shards=2")
	c := rawClient(t)
	topic := name("partial")
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	shard1 := "{" + stream(topic) + "}:1"
	if err := c.Del(ctx, shard1).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, shard1, "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var msgs []*broker.Message
	for i := range 20 {
		msgs = append(msgs, &broker.Message{Key: "key-" + strconv.Itoa(i)})
	}
	err := newPublisher(t, b).Publish(ctx, topic, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish = %v, want a *PublishError", err)
	}
	failed := map[int]bool{}
	for _, f := range pe.Failed {
		failed[f.Index] = true
		if redisstreams.ShardOf(msgs[f.Index].Key, 2) != 1 || f.ID != msgs[f.Index].ID {
			t.Errorf("failure %+v is not a message of shard 1", f)
		}
	}
	n, _ := c.XLen(ctx, stream(topic)).Result()
	for i, m := range msgs {
		if redisstreams.ShardOf(m.Key, 2) == 1 && !failed[i] {
			t.Errorf("message %d of shard 1 not reported failed", i)
		}
	}
	if int(n) != len(msgs)-len(pe.Failed) {
		t.Errorf("shard 0 holds %d entries, want the %d that did not fail", n, len(msgs)-len(pe.Failed))
	}
}

// maxlen caps the stream (approximately, a whole node of entries at a
// time): old entries go, read or not — the documented loss risk.
func TestMaxLenTrims(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "maxlen=10")
	c := rawClient(t)
	topic := name("maxlen")
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	msgs := make([]*broker.Message, 1000)
	for i := range msgs {
		msgs[i] = &broker.Message{Payload: []byte("x")}
	}
	if err := newPublisher(t, b).Publish(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.XLen(ctx, stream(topic)).Result(); n >= 1000 || n < 10 {
		t.Errorf("XLEN = %d after 1000 entries with maxlen=10, want it trimmed to about 10", n)
	}
}

func TestDeleteTopic(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "shards=3")
	c := rawClient(t)
	topic := name("delete")
	s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Ordering: semantics.PerKey})
	if err := newPublisher(t, b).Publish(ctx, topic, &broker.Message{Key: "a"}, &broker.Message{Key: "b"}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, ctx, s)
	if err := d.Nack(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	_ = s.Close(ctx)
	if err := driverOf(t, b).DeleteTopic(ctx, topic); err != nil {
		t.Fatal(err)
	}
	keys, _ := c.Keys(ctx, "*"+stream(topic)+"*").Result()
	if len(keys) != 0 {
		t.Errorf("keys left after DeleteTopic: %v", keys)
	}
}

// driverOpts are complete driver options for topic, as package broker
// would pass them.
func driverOpts(topic string) driver.SubscriberOptions {
	return driver.SubscriberOptions{Topic: topic, Group: "g", DeadLetterTopic: topic + ".dlq"}
}

// A message published for later (DeliverAt) is held in the topic's
// schedule, counted as delayed, and added to the stream of its key's shard
// once due, intact: binary payload, key and headers.
func TestScheduled(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "shards=3")
	c := rawClient(t)
	topic := name("sched")
	s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	m := &broker.Message{Key: "k-7", Payload: []byte{0, 255, ':', '1', ':'}, Headers: map[string]string{"a:b": "1:2", "empty": ""},
		DeliverAt: time.Now().Add(400 * time.Millisecond)}
	now := &broker.Message{Key: "k-7", Payload: []byte("now")}
	if err := newPublisher(t, b).Publish(ctx, topic, m, now); err != nil {
		t.Fatal(err)
	}
	if bl, err := b.Backlog(ctx, topic, "g"); err != nil || bl.Delayed != 1 {
		t.Errorf("Backlog = %+v, %v; want the scheduled message delayed", bl, err)
	}
	first := receive(t, ctx, s)
	if first.Message().ID != now.ID {
		t.Fatalf("first delivery %s, want the unscheduled %s", first.Message().ID, now.ID)
	}
	_ = first.Ack(ctx)
	d := receive(t, ctx, s)
	got := d.Message()
	if early := time.Until(m.DeliverAt); early > time.Millisecond {
		t.Errorf("delivered %v before DeliverAt", early)
	}
	if got.ID != m.ID || got.Key != "k-7" || !bytes.Equal(got.Payload, m.Payload) || len(got.Headers) != 2 ||
		got.Header("a:b") != "1:2" || got.Header("empty") != "" || got.Attempt != 1 || !got.DeliverAt.IsZero() {
		t.Errorf("scheduled message delivered as %+v", got)
	}
	_ = d.Ack(ctx)
	shard := redisstreams.ShardOf("k-7", 3)
	st := stream(topic)
	if shard > 0 {
		st = "{" + st + "}:" + strconv.Itoa(shard)
	}
	if n, _ := c.XLen(ctx, st).Result(); n != 2 {
		t.Errorf("the shard of the key holds %d entries, want 2", n)
	}
}
