package nats

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func subscribe(t *testing.T, b *broker.Broker, o broker.SubscriberOptions) *broker.Subscriber {
	t.Helper()
	s, err := b.NewSubscriber(testCtx(t), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func publish(t *testing.T, b *broker.Broker, topic string, msgs ...*broker.Message) {
	t.Helper()
	p, err := b.NewPublisher(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if err := p.Publish(testCtx(t), topic, msgs...); err != nil {
		t.Fatal(err)
	}
}

func receive(t *testing.T, s *broker.Subscriber) *broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func consumerInfo(t *testing.T, js jetstream.JetStream, topic, group string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(testCtx(t), StreamName(topic), group)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// Names are checked against NATS's rules before any I/O: on a broker whose
// connection is closed, a bad name is still an InvalidArgument error (an
// attempt to talk to the server would fail otherwise).
func TestNamesCheckedBeforeIO(t *testing.T) {
	nc, _ := rawConn(t)
	nb, err := New(nc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	ctx := testCtx(t)
	badTopics := []string{"a b", "a.*", "orders.>", ".a", "a.", "a..b", "$JS.x", "a/b", `a\b`, "é", strings.Repeat("t", 256), "a\tb"}
	for _, topic := range badTopics {
		if err := nb.Declare(ctx, topic, nil); driver.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Declare(%q) = %v, want invalid argument", topic, err)
		}
		if _, err := nb.NewSubscriber(ctx, driver.SubscriberOptions{Topic: topic, Group: "g"}); driver.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("NewSubscriber(topic %q) = %v, want invalid argument", topic, err)
		}
		if _, err := nb.HasGroup(ctx, topic); driver.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("HasGroup(%q) = %v, want invalid argument", topic, err)
		}
		if _, err := nb.Backlog(ctx, topic, "g"); driver.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Backlog(%q) = %v, want invalid argument", topic, err)
		}
	}
	p, err := nb.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, "a b", &driver.Message{ID: "x"}); driver.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("Publish to %q = %v, want invalid argument", "a b", err)
	}
	for _, group := range []string{"a.b", "a*", "a>", "a b", "a/b", strings.Repeat("g", 256)} {
		if err := nb.Declare(ctx, "ok", []string{group}); driver.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Declare(group %q) = %v, want invalid argument", group, err)
		}
		if _, err := nb.NewSubscriber(ctx, driver.SubscriberOptions{Topic: "ok", Group: group}); driver.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("NewSubscriber(group %q) = %v, want invalid argument", group, err)
		}
	}
	// The dead-letter topic too, when dead-lettering is asked for.
	if _, err := nb.NewSubscriber(ctx, driver.SubscriberOptions{Topic: "ok", Group: "g", MaxAttempts: 3, DeadLetterTopic: "bad topic"}); driver.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("NewSubscriber(dead-letter topic %q) = %v, want invalid argument", "bad topic", err)
	}
	// And the adapter's own header names.
	err = p.Publish(ctx, "ok", &driver.Message{ID: "x", Headers: map[string]string{HeaderKey: "forged"}})
	if driver.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), HeaderKey) {
		t.Errorf("Publish with header %s = %v, want invalid argument", HeaderKey, err)
	}
}

// The no-group rule: a topic no stream captures, or whose stream has no
// durable consumer for the subject, refuses Publish with ErrNoGroup; a
// stream of the account's own that captures the topic (by a wildcard) is
// used as it is once a group is declared on it.
func TestNoGroupRefusedAndForeignStreams(t *testing.T) {
	prefix := uniq("qknogroup")
	b, nb := openBroker(t, prefix, "")
	ctx := testCtx(t)
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)

	// No stream at all.
	if err := pub.Publish(ctx, prefix+".none", &broker.Message{}); !errors.Is(err, broker.ErrNoGroup) || broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Publish to a topic without a stream = %v, want ErrNoGroup (not found)", err)
	}
	// A stream of another client that captures prefix.events.*, with an
	// ephemeral consumer only: still no group.
	_, js := rawConn(t)
	foreign := strings.ReplaceAll(prefix, "-", "_") + "_FOREIGN"
	cleanupStreams(t, testenv.NATS(t), foreign)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: foreign, Subjects: []string{prefix + ".events.*"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateConsumer(ctx, foreign, jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	topic := prefix + ".events.created"
	if err := pub.Publish(ctx, topic, &broker.Message{}); !errors.Is(err, broker.ErrNoGroup) {
		t.Errorf("Publish to a topic whose stream has only an ephemeral consumer = %v, want ErrNoGroup", err)
	}
	// A durable consumer filtered on another subject is no group of this topic.
	if _, err := js.CreateConsumer(ctx, foreign, jetstream.ConsumerConfig{Durable: "other", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: prefix + ".events.deleted"}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, topic, &broker.Message{}); !errors.Is(err, broker.ErrNoGroup) {
		t.Errorf("Publish to a topic whose stream's durable consumer filters another subject = %v, want ErrNoGroup", err)
	}
	// Declare uses the foreign stream (it creates no stream of its own).
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Stream(ctx, StreamName(topic)); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("Declare created stream %s though %s captures the topic: %v", StreamName(topic), foreign, err)
	}
	m := &broker.Message{Payload: []byte("to the foreign stream")}
	if err := pub.Publish(ctx, topic, m); err != nil {
		t.Fatalf("Publish after Declare: %v", err)
	}
	d := receive(t, subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"}))
	if d.Message().ID != m.ID {
		t.Errorf("received %s, want %s", d.Message().ID, m.ID)
	}
	_ = d.Ack(ctx)
	if bl, err := nb.Backlog(ctx, topic, "g"); err != nil || bl.Pending != 0 {
		t.Errorf("Backlog = %+v, %v; want nothing pending", bl, err)
	}
	// A consumer made outside queuekit that cannot ack explicitly is refused.
	if _, err := js.CreateConsumer(ctx, foreign, jetstream.ConsumerConfig{Durable: "noack", AckPolicy: jetstream.AckNonePolicy, FilterSubject: topic}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "noack"}); broker.KindOf(err) != semantics.Unsupported {
		t.Errorf("NewSubscriber on an ack-none consumer = %v, want unsupported", err)
	}
}

// The topology rule as documented: a group receives every message
// published after it was declared and — with limits retention — also the
// older ones the stream keeps; with retention=interest, a group declared
// later does not get what every earlier group acked.
func TestGroupDeclaredLater(t *testing.T) {
	for _, retention := range []string{Limits, Interest} {
		t.Run(retention, func(t *testing.T) {
			prefix := uniq("qklater")
			b, _ := openBroker(t, prefix, "retention="+retention)
			ctx := testCtx(t)
			topic := prefix
			if err := b.Declare(ctx, topic, "early"); err != nil {
				t.Fatal(err)
			}
			old := &broker.Message{Payload: []byte("before the late group")}
			publish(t, b, topic, old)
			early := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "early"})
			d := receive(t, early)
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			// An at-least-once Ack is sent asynchronously: under interest
			// retention the message leaves the stream only once the server
			// has it, so wait for the early group's backlog to empty (broker
			// state, polled against a deadline) before the late group comes.
			deadline := time.Now().Add(10 * time.Second)
			for {
				bl, err := b.Backlog(ctx, topic, "early")
				if err == nil && bl.Total() == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the early group's ack never reached the server: backlog %+v, %v", bl, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := b.Declare(ctx, topic, "late"); err != nil {
				t.Fatal(err)
			}
			fresh := &broker.Message{Payload: []byte("after the late group")}
			publish(t, b, topic, fresh)
			late := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "late"})
			first := receive(t, late)
			want := old.ID
			if retention == Interest {
				want = fresh.ID
			}
			if first.Message().ID != want {
				t.Errorf("the late group's first message is %s, want %s", first.Message().ID, want)
			}
		})
	}
}

// Under AtMostOnce, Ack returns only once the server recorded it: the
// consumer's info shows the message acked as soon as Ack returns. An Ack
// that comes after the ack wait of the pull that delivered it fails (the
// server may have handed a copy to another subscriber) and the message is
// redelivered.
func TestAtMostOnceAck(t *testing.T) {
	prefix := uniq("qkamo")
	b, nb := openBroker(t, prefix, "")
	ctx := testCtx(t)
	topic := prefix
	ds, err := nb.NewSubscriber(ctx, driver.SubscriberOptions{Topic: topic, Group: "g", Guarantee: semantics.AtMostOnce,
		AckTimeout: 300 * time.Millisecond, DeadLetterTopic: driver.DeadLetterTopic(topic)})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close(context.Background())
	m1, m2 := &broker.Message{Payload: []byte("one")}, &broker.Message{Payload: []byte("two")}
	publish(t, b, topic, m1)
	d, err := ds.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if info := consumerInfo(t, nb.JetStream(), topic, "g"); info.NumAckPending != 0 || info.AckFloor.Stream != 1 {
		t.Errorf("right after Ack: ack pending %d, ack floor %d; want 0 and 1 (the ack recorded)", info.NumAckPending, info.AckFloor.Stream)
	}

	publish(t, b, topic, m2)
	d, err = ds.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Wait past the instant the server may redeliver (what is tested is
	// the behaviour after that instant; no event announces it).
	time.Sleep(time.Until(d.(*delivery).deadline) + 10*time.Millisecond)
	err = d.Ack(ctx)
	if driver.KindOf(err) != semantics.Transient || !strings.Contains(err.Error(), "do not handle it") {
		t.Fatalf("Ack after the ack wait = %v, want a transient error", err)
	}
	again, err := ds.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.Message().ID != m2.ID || again.Message().Attempt != 2 {
		t.Errorf("after the failed Ack got %s attempt %d, want %s attempt 2", again.Message().ID, again.Message().Attempt, m2.ID)
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// PerKey configures the group: max ack pending 1, on a new group and on
// one declared before.
func TestPerKeyConfiguresGroup(t *testing.T) {
	prefix := uniq("qkperkey")
	b, nb := openBroker(t, prefix, "")
	ctx := testCtx(t)
	topic := prefix
	if err := b.Declare(ctx, topic, "declared"); err != nil {
		t.Fatal(err)
	}
	if got := consumerInfo(t, nb.JetStream(), topic, "declared").Config.MaxAckPending; got != DefaultMaxAckPending {
		t.Fatalf("declared group: max ack pending %d, want %d", got, DefaultMaxAckPending)
	}
	for _, g := range []string{"declared", "fresh"} {
		s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: g, Ordering: semantics.PerKey, AckTimeout: 4 * time.Second})
		info := consumerInfo(t, nb.JetStream(), topic, g)
		if info.Config.MaxAckPending != 1 || info.Config.AckWait != 4*time.Second {
			t.Errorf("group %s under PerKey: max ack pending %d, ack wait %v; want 1 and 4s", g, info.Config.MaxAckPending, info.Config.AckWait)
		}
		var c jetstream.Consumer
		if !s.As(&c) || c.CachedInfo().Name != g {
			t.Errorf("subscriber As(*jetstream.Consumer) failed")
		}
	}
}

// As gives the connection and the JetStream context.
func TestAs(t *testing.T) {
	b, nb := openBroker(t, uniq("qkas"), "")
	var nc *natsgo.Conn
	var js jetstream.JetStream
	var typed *Broker
	if !b.As(&nc) || nc != nb.Conn() || !b.As(&js) || js == nil || !b.As(&typed) || typed != nb {
		t.Errorf("As: conn %v js %v broker %v", nc, js, typed)
	}
	var wrong *strings.Builder
	if b.As(&wrong) {
		t.Error("As(*strings.Builder) = true")
	}
	p, err := b.NewPublisher(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	var pjs jetstream.JetStream
	if !p.As(&pjs) || pjs == nil {
		t.Error("publisher As(*jetstream.JetStream) failed")
	}
}

// Another client's headers named like reserved ones never set a
// delivery's Attempt or PublishedAt; its queuekit-id is the ID (that is
// how other producers give IDs), and a message without one gets a stable
// ID from its stream sequence.
func TestForeignHeaders(t *testing.T) {
	prefix := uniq("qkforeign")
	b, _ := openBroker(t, prefix, "")
	ctx := testCtx(t)
	topic := prefix
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	_, js := rawConn(t)
	m := natsgo.NewMsg(topic)
	m.Data = []byte("from another client")
	m.Header.Set(driver.HeaderID, "their-id")
	m.Header.Set(driver.HeaderAttempt, "99")
	m.Header.Set(driver.HeaderPublishedAt, "2001-01-01T00:00:00Z")
	m.Header.Set("Status", "404") // not a status: a header of the message
	m.Header.Set("trace", "t-1")
	m.Header.Add("multi", "a")
	m.Header.Add("multi", "b")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	plain := natsgo.NewMsg(topic)
	plain.Data = []byte("no id")
	if _, err := js.PublishMsg(ctx, plain); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub)
	got := d.Message()
	if got.ID != "their-id" || got.Attempt != 1 || time.Since(got.PublishedAt) > time.Minute {
		t.Errorf("ID %q attempt %d published %v; want their-id, 1, now", got.ID, got.Attempt, got.PublishedAt)
	}
	if _, ok := got.Headers[driver.HeaderAttempt]; ok {
		t.Errorf("headers keep %s: %v", driver.HeaderAttempt, got.Headers)
	}
	if got.Headers["trace"] != "t-1" || got.Headers["multi"] != "a, b" || got.Headers["Status"] != "404" {
		t.Errorf("headers %v", got.Headers)
	}
	second := receive(t, sub)
	if id := second.Message().ID; id != StreamName(topic)+":2" {
		t.Errorf("a message without queuekit-id has ID %q, want %s:2", id, StreamName(topic))
	}
	_ = second.Ack(ctx)
	_ = d.Nack(ctx, 0)
	again := receive(t, sub)
	if again.Message().ID != "their-id" || again.Message().Attempt != 2 {
		t.Errorf("redelivery: ID %q attempt %d, want their-id 2", again.Message().ID, again.Message().Attempt)
	}
	_ = again.Ack(ctx)
}

// Backlog reports pending and in-flight messages of a group, and NotFound
// for a group that does not exist.
func TestBacklog(t *testing.T) {
	prefix := uniq("qkbacklog")
	b, _ := openBroker(t, prefix, "")
	ctx := testCtx(t)
	topic := prefix
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 1})
	var msgs []*broker.Message
	for range 5 {
		msgs = append(msgs, &broker.Message{Payload: []byte("x")})
	}
	publish(t, b, topic, msgs...)
	d := receive(t, sub)
	// Until an ack, every message is pending or in flight; one is in
	// flight at least (it was received).
	bl, err := b.Backlog(ctx, topic, "g")
	if err != nil {
		t.Fatal(err)
	}
	if bl.Total() != 5 || bl.InFlight < 1 || bl.Delayed != -1 || bl.Consumers != -1 {
		t.Errorf("Backlog = %+v, want 5 in all, at least 1 in flight", bl)
	}
	_ = d.Ack(ctx)
	if _, err := b.Backlog(ctx, topic, "nope"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Backlog of a missing group = %v, want not found", err)
	}
	if _, err := b.Backlog(ctx, prefix+"-missing", "g"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Backlog of a missing topic = %v, want not found", err)
	}
}

// Subscriber.Close gives back (nak) what it pulled and did not hand out:
// another subscriber of the group gets it before the ack wait — all but
// the odd message that nats-server 2.9 hands to the closed subscriber's
// pull request before it drops it, which comes back after the ack wait.
// Nothing is lost either way.
func TestCloseGivesBackPulledMessages(t *testing.T) {
	const ackWait = 3 * time.Second
	prefix := uniq("qkclose")
	b, _ := openBroker(t, prefix, "ack_wait="+ackWait.String())
	ctx := testCtx(t)
	topic := prefix
	first, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 100})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*broker.Message
	for range 20 {
		msgs = append(msgs, &broker.Message{Payload: []byte("x")})
	}
	publish(t, b, topic, msgs...)
	d := receive(t, first)
	_ = d.Ack(ctx)
	start := time.Now()
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	second := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	got := map[string]bool{d.Message().ID: true}
	early := 0
	for len(got) < len(msgs) {
		rctx, cancel := context.WithTimeout(ctx, 2*ackWait)
		d, err := second.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatalf("got %d of %d after %v: %v", len(got), len(msgs), time.Since(start), err)
		}
		if !got[d.Message().ID] && time.Since(start) < ackWait {
			early++
		}
		got[d.Message().ID] = true
		_ = d.Ack(ctx)
	}
	if early < len(msgs)/2 {
		t.Errorf("only %d of the %d messages the closed subscriber held came back before the ack wait: they were not given back", early, len(msgs)-1)
	}
	t.Logf("%d of %d given back at once", early, len(msgs)-1)
}

// A publish whose ack never comes fails after publish_timeout (Transient,
// naming the messages) and gives its window room back: the publisher keeps
// working. (A plain NATS subscriber on the subject answers nothing, so
// JetStream's ack never comes.)
func TestPublishTimeout(t *testing.T) {
	prefix := uniq("qktimeout")
	nb := openDriver(t, prefix, "publish_timeout=300ms&publish_window=4")
	ctx := testCtx(t)
	nc, _ := rawConn(t)
	silent := prefix + ".silent"
	sub, err := nc.SubscribeSync(silent)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	p, err := nb.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	msgs := []*driver.Message{{ID: "a"}, {ID: "b"}, {ID: "c"}, {ID: "d"}, {ID: "e"}, {ID: "f"}}
	start := time.Now()
	err = p.Publish(ctx, silent, msgs...)
	var pe *driver.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != len(msgs) || driver.KindOf(err) != semantics.Transient || !strings.Contains(err.Error(), "publish_timeout") {
		t.Fatalf("Publish without acks = %v, want every message failed, transient, naming publish_timeout", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the timeout took %v", took)
	}
	// The window is free again: a publish to a real topic goes through.
	topic := prefix + ".real"
	if err := nb.Declare(ctx, topic, []string{"g"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, topic, &driver.Message{ID: "ok", Payload: []byte("x")}); err != nil {
		t.Errorf("Publish after a timeout: %v", err)
	}
}

// A stream deleted by another process since the broker last used it is
// created again when a subscriber or Declare needs it.
func TestStreamDeletedElsewhere(t *testing.T) {
	prefix := uniq("qkdeleted")
	b, _ := openBroker(t, prefix, "")
	ctx := testCtx(t)
	topic := prefix
	if err := b.Declare(ctx, topic, "a"); err != nil {
		t.Fatal(err)
	}
	_, js := rawConn(t)
	if err := js.DeleteStream(ctx, StreamName(topic)); err != nil {
		t.Fatal(err)
	}
	s := subscribe(t, b, broker.SubscriberOptions{Topic: topic, Group: "b"})
	m := &broker.Message{Payload: []byte("after the deletion")}
	publish(t, b, topic, m)
	if d := receive(t, s); d.Message().ID != m.ID {
		t.Errorf("got %s, want %s", d.Message().ID, m.ID)
	}
}

// A closed publisher gives its JetStream context's reply subscription (and
// the goroutine nats.go runs for it) back to the connection: an
// application that opens a publisher per request must not pile them up.
func TestPublisherCloseReleasesReplySubscription(t *testing.T) {
	prefix := uniq("qkpubclose")
	nb := openDriver(t, prefix, "")
	ctx := testCtx(t)
	if err := nb.Declare(ctx, prefix, []string{"g"}); err != nil {
		t.Fatal(err)
	}
	before := nb.Conn().NumSubscriptions()
	for range 3 {
		p, err := nb.NewPublisher(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Publish(ctx, prefix, &driver.Message{ID: "x", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if after := nb.Conn().NumSubscriptions(); after != before {
		t.Fatalf("subscriptions on the connection: %d before, %d after 3 publishers were closed", before, after)
	}
}
