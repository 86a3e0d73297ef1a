package rabbitmq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

func TestRoundTripCarriesIDKeyHeadersAndPayload(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("rt")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	pub := newPub(t, b)
	payload := []byte{0, 1, 2, 0xff, 'x', 0}
	msg := &broker.Message{ID: "id-1", Key: "k-1", Payload: payload, Headers: map[string]string{"a": "1", "empty": ""}}
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, msg); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	d := receive(t, sub, 5*time.Second)
	m := d.Message()
	if m.ID != "id-1" || m.Key != "k-1" || !bytes.Equal(m.Payload, payload) || m.Topic != topic || m.Attempt != 1 {
		t.Errorf("got id=%q key=%q payload=%v topic=%q attempt=%d", m.ID, m.Key, m.Payload, m.Topic, m.Attempt)
	}
	if len(m.Headers) != 2 || m.Headers["a"] != "1" || m.Headers["empty"] != "" {
		t.Errorf("headers = %v, want exactly a=1 and empty=", m.Headers)
	}
	if !m.PublishedAt.Equal(msg.PublishedAt) {
		t.Errorf("PublishedAt = %v, want %v", m.PublishedAt, msg.PublishedAt)
	}
	if err := d.Ack(ctxT(t, time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctxT(t, time.Second)); err != nil {
		t.Errorf("second Ack = %v, want nil", err)
	}
	if err := d.Nack(ctxT(t, time.Second), 0); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Errorf("Nack after Ack = %v, want ErrAlreadySettled", err)
	}
}

func TestPublishWithoutGroupIsErrNoGroup(t *testing.T) {
	b := openBroker(t, "", Options{})
	pub := newPub(t, b)
	topic := uniq("nobody")
	msgs := []*broker.Message{{Payload: []byte("a")}, {Payload: []byte("b")}}
	err := pub.Publish(ctxT(t, 5*time.Second), topic, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 2 || broker.KindOf(err) != semantics.NotFound || !errors.Is(err, broker.ErrNoGroup) {
		t.Fatalf("Publish to a topic nobody subscribes = %v, want a PublishError of 2 NotFound failures matching ErrNoGroup", err)
	}
	if pe.Failed[0].Index != 0 || pe.Failed[1].ID != msgs[1].ID {
		t.Errorf("failures = %+v", pe.Failed)
	}
	for _, f := range pe.Failed {
		if !errors.Is(f.Err, broker.ErrNoGroup) || broker.KindOf(f.Err) != semantics.NotFound {
			t.Errorf("failure %d = %v, want NotFound matching ErrNoGroup", f.Index, f.Err)
		}
	}
	single := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{})
	if !errors.Is(single, broker.ErrNoGroup) || broker.KindOf(single) != semantics.NotFound {
		t.Errorf("single Publish to a topic nobody subscribes = %v, want NotFound matching ErrNoGroup", single)
	}
	// The channel survives: a routable publish right after succeeds.
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic})
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{Payload: []byte("c")}); err != nil {
		t.Fatalf("Publish after subscribing: %v", err)
	}
	if m := receive(t, sub, 5*time.Second).Message(); string(m.Payload) != "c" {
		t.Errorf("received %q, want c (the unroutable ones are gone)", m.Payload)
	}

	// Dropping unroutable messages is no longer an option.
	_, err = Dial(ctxT(t, 5*time.Second), testenv.RabbitMQ(t)+"?mandatory=false", Options{})
	if broker.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), "mandatory=false") {
		t.Errorf("Dial with mandatory=false = %v, want InvalidArgument", err)
	}
}

// Declare makes a topic's groups exist before any subscriber: messages
// published afterwards wait in each group's queue.
func TestDeclareBeforeSubscribing(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("declare")
	ctx := ctxT(t, 20*time.Second)
	if err := b.Declare(ctx, topic, "a", "b"); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	if err := b.Declare(ctx, topic, "a", "b"); err != nil {
		t.Fatalf("Declare again (idempotent): %v", err)
	}
	if err := newPub(t, b).Publish(ctx, topic, &broker.Message{ID: "early"}); err != nil {
		t.Fatalf("Publish after Declare: %v", err)
	}
	for _, g := range []string{"a", "b"} {
		if m := receive(t, newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: g}), 5*time.Second).Message(); m.ID != "early" {
			t.Errorf("group %s received %q", g, m.ID)
		}
	}
	// A group first declared by a subscriber with its own queue arguments
	// is kept as it is by Declare.
	newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "c", MaxAttempts: 3, Ordering: semantics.PerKey})
	if err := b.Declare(ctx, topic, "c"); err != nil {
		t.Errorf("Declare of a group declared with MaxAttempts and PerKey: %v", err)
	}
	// DeclareSubscription declares with a subscriber's arguments.
	rb := rabbit(t, b)
	opts := broker.SubscriberOptions{Topic: topic, Group: "d", MaxAttempts: 2}
	if err := rb.DeclareSubscription(ctx, opts); err != nil {
		t.Fatalf("DeclareSubscription: %v", err)
	}
	newSub(t, b, opts) // same arguments: no mismatch
}

func TestNackDelayWaitsThenCountsAttempts(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("delay")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic})
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "d", Key: "k", Headers: map[string]string{"h": "v"}}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 5*time.Second)
	nackedAt := time.Now()
	if err := d.Nack(ctxT(t, 5*time.Second), 300*time.Millisecond); err != nil {
		t.Fatalf("Nack(300ms): %v", err)
	}
	d = receive(t, sub, 10*time.Second)
	if waited := time.Since(nackedAt); waited < 300*time.Millisecond {
		t.Errorf("redelivered %v after Nack(300ms)", waited)
	}
	m := d.Message()
	if m.ID != "d" || m.Key != "k" || m.Attempt != 2 || len(m.Headers) != 1 || m.Headers["h"] != "v" {
		t.Errorf("after a delayed nack: id=%q key=%q attempt=%d headers=%v, want d, k, 2, h=v only", m.ID, m.Key, m.Attempt, m.Headers)
	}
	if err := d.Nack(ctxT(t, time.Second), 0); err != nil {
		t.Fatal(err)
	}
	d = receive(t, sub, 5*time.Second)
	if d.Message().Attempt != 3 {
		t.Errorf("Attempt after delayed nack then nack = %d, want 3", d.Message().Attempt)
	}
	_ = d.Ack(ctxT(t, time.Second))
}

func TestDelayMillis(t *testing.T) {
	for in, want := range map[time.Duration]int64{
		0: 1, time.Microsecond: 1, 9 * time.Millisecond: 9, 10 * time.Millisecond: 10, 11 * time.Millisecond: 12,
		99 * time.Millisecond: 100, 100 * time.Millisecond: 100, 101 * time.Millisecond: 120, 1234 * time.Millisecond: 1500,
		time.Second: 1000, 2600 * time.Millisecond: 3000, 7 * time.Second: 8000, 8001 * time.Millisecond: 10000,
		time.Minute: 60000, time.Hour: 4000000,
	} {
		if got := delayMillis(in); got != want {
			t.Errorf("delayMillis(%v) = %d, want %d", in, got, want)
		}
	}
}

// dead-letter queue of group g for topic: declared with the group's queue.
func dlqSub(t *testing.T, b *broker.Broker, topic, group string) *broker.Subscriber {
	return newSub(t, b, broker.SubscriberOptions{Topic: topic + ".dlq", Group: group})
}

func TestDeadLetterAfterDelayedNacksKeepsReasonAndTopic(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("dlq")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: 3})
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "x", Payload: []byte("p"), Headers: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	for want := 1; want <= 3; want++ {
		d := receive(t, sub, 10*time.Second)
		if got := d.Message().Attempt; got != want {
			t.Fatalf("Attempt = %d, want %d", got, want)
		}
		if err := d.Nack(ctxT(t, 5*time.Second), 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	// Nobody subscribed to the dead-letter topic before: the group's
	// dead-letter queue, declared with the group's queue, kept it.
	dead := receive(t, dlqSub(t, b, topic, "g"), 10*time.Second).Message()
	if dead.ID != "x" || string(dead.Payload) != "p" || dead.Header("a") != "b" {
		t.Errorf("dead letter = %+v", dead)
	}
	if !strings.HasPrefix(dead.Header(broker.HeaderDeadReason), "rejected") || dead.Header(broker.HeaderOriginalTopic) != topic {
		t.Errorf("dead letter headers = %v, want reason rejected and original topic %s", dead.Headers, topic)
	}
}

func TestDeadLetterNativelyWhenConsumersKeepCrashing(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("crashdlq")
	opts := broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: 2}
	if s, err := b.NewSubscriber(ctxT(t, 5*time.Second), opts); err != nil { // declares the queues
		t.Fatal(err)
	} else {
		_ = s.Close(context.Background())
	}
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	for want := 1; want <= 2; want++ {
		s, err := b.NewSubscriber(ctxT(t, 5*time.Second), opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := receive(t, s, 10*time.Second).Message().Attempt; got != want {
			t.Errorf("Attempt = %d, want %d", got, want)
		}
		_ = s.Close(context.Background()) // crash: never settled
	}
	dead := receive(t, dlqSub(t, b, topic, "g"), 10*time.Second).Message()
	if dead.ID != "c" || !strings.HasPrefix(dead.Header(broker.HeaderDeadReason), "delivery_limit") || dead.Header(broker.HeaderOriginalTopic) != topic {
		t.Errorf("dead letter %q headers = %v, want reason delivery_limit from x-delivery-limit", dead.ID, dead.Headers)
	}
}

func TestAckTimeoutRequeues(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("acktimeout")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, AckTimeout: 200 * time.Millisecond})
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "slow"}); err != nil {
		t.Fatal(err)
	}
	first := receive(t, sub, 5*time.Second)
	start := time.Now()
	again := receive(t, sub, 5*time.Second)
	if again.Message().ID != "slow" || again.Message().Attempt != 2 || time.Since(start) < 150*time.Millisecond {
		t.Errorf("redelivery id=%q attempt=%d after %v", again.Message().ID, again.Message().Attempt, time.Since(start))
	}
	if err := first.Ack(ctxT(t, time.Second)); err == nil || !strings.Contains(err.Error(), "AckTimeout") || broker.KindOf(err) != semantics.Transient {
		t.Errorf("late Ack = %v, want a transient error naming AckTimeout", err)
	}
	if err := again.Ack(ctxT(t, time.Second)); err != nil {
		t.Errorf("Ack in time: %v", err)
	}
}

func TestPerKeyOrderingUsesOneActiveConsumer(t *testing.T) {
	t.Run("single-active-consumer", func(t *testing.T) { testOneActiveConsumer(t, false, false) })
	// A group declared by Declare has no single-active-consumer argument:
	// its ordered subscribers take turns through the group's activity
	// lock, within one connection and across connections.
	t.Run("declared-first", func(t *testing.T) { testOneActiveConsumer(t, true, false) })
	t.Run("declared-first-two-connections", func(t *testing.T) { testOneActiveConsumer(t, true, true) })
}

func testOneActiveConsumer(t *testing.T, declare, twoConnections bool) {
	b := openBroker(t, "", Options{})
	b2 := b
	if twoConnections {
		b2 = openBroker(t, "", Options{})
	}
	topic := uniq("sac")
	opts := broker.SubscriberOptions{Topic: topic, Group: "g", Ordering: semantics.PerKey, Prefetch: 5}
	if declare {
		if err := b.Declare(ctxT(t, 5*time.Second), topic, "g"); err != nil {
			t.Fatal(err)
		}
	}
	first := newSub(t, b, opts)
	second, err := b2.NewSubscriber(ctxT(t, 5*time.Second), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close(context.Background())
	pub := newPub(t, b)
	var msgs []*broker.Message
	for i := 0; i < 20; i++ {
		msgs = append(msgs, &broker.Message{ID: fmt.Sprint(i), Key: "k"})
	}
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	// The active consumer gets all 20 in order, although the other one
	// asks too.
	got := make(chan string, 20)
	go func() {
		if d, err := second.Receive(ctxT(t, 10*time.Second)); err == nil {
			got <- "second:" + d.Message().ID
			_ = d.Ack(context.Background())
		}
	}()
	for i := 0; i < 20; i++ {
		d := receive(t, first, 5*time.Second)
		if d.Message().ID != fmt.Sprint(i) {
			t.Fatalf("delivery %d is %s", i, d.Message().ID)
		}
		_ = d.Ack(ctxT(t, time.Second))
	}
	select {
	case s := <-got:
		t.Fatalf("the inactive consumer received %s", s)
	default:
	}
	// When the active one goes, the other takes over.
	_ = first.Close(context.Background())
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "next", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "second:next" {
			t.Errorf("after failover the second consumer got %s, want next", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second consumer did not take over")
	}
}

func TestInspectReportsDepthAndConsumers(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("inspect")
	if _, err := rabbit(t, b).Inspect(ctxT(t, 5*time.Second), topic, "g"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Inspect of a missing queue = %v, want NotFound", err)
	}
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	if info, err := rabbit(t, b).Inspect(ctxT(t, 5*time.Second), topic, "g"); err != nil || info.Consumers != 1 || info.Queue != topic+".g" {
		t.Errorf("Inspect = %+v, %v; want queue %s.g with 1 consumer", info, err, topic)
	}
	_ = sub.Close(context.Background())
	msgs := make([]*broker.Message, 7)
	for i := range msgs {
		msgs[i] = &broker.Message{}
	}
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	var info QueueInfo
	deadline := time.Now().Add(5 * time.Second)
	for { // the queue's counters lag the confirms a little
		var err error
		if info, err = rabbit(t, b).Inspect(ctxT(t, 5*time.Second), topic, "g"); err != nil {
			t.Fatal(err)
		}
		if info.Messages == 7 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info.Messages != 7 || info.Consumers != 0 {
		t.Errorf("Inspect = %+v, want 7 messages and no consumer", info)
	}
	if bl, err := rabbit(t, b).Backlog(ctxT(t, 5*time.Second), topic, "g"); err != nil || bl.Pending != 7 || bl.Consumers != 0 || bl.InFlight != -1 {
		t.Errorf("Backlog = %+v, %v", bl, err)
	}
	if err := rabbit(t, b).DeleteSubscription(ctxT(t, 5*time.Second), topic, "g"); err != nil {
		t.Fatal(err)
	}
	if _, err := rabbit(t, b).Inspect(ctxT(t, 5*time.Second), topic, "g"); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("Inspect after DeleteSubscription = %v, want NotFound", err)
	}
}

func TestGroupSettingsMustMatchTheQueue(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("mismatch")
	newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: 3})
	_, err := b.NewSubscriber(ctxT(t, 5*time.Second), broker.SubscriberOptions{Topic: topic, Group: "g", MaxAttempts: 5})
	if broker.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), "other arguments") {
		t.Errorf("a second subscriber with another MaxAttempts = %v, want InvalidArgument explaining the mismatch", err)
	}
}

func TestPassiveVerifiesTopology(t *testing.T) {
	b := openBroker(t, "passive=true", Options{})
	_, err := b.NewSubscriber(ctxT(t, 5*time.Second), broker.SubscriberOptions{Topic: uniq("missing")})
	if broker.KindOf(err) != semantics.NotFound {
		t.Errorf("passive subscribe to a missing queue = %v, want NotFound", err)
	}
	x := openBroker(t, "passive=true&exchange="+uniq("no-such-exchange"), Options{})
	if _, err := x.NewPublisher(ctxT(t, 5*time.Second)); broker.KindOf(err) != semantics.NotFound {
		t.Errorf("passive publisher on a missing exchange = %v, want NotFound", err)
	}
}

func TestTopicExchangeWildcards(t *testing.T) {
	b := openBroker(t, "exchange_type=topic", Options{Exchange: uniq("qk-topic-x")})
	base := uniq("orders")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: base + ".*", Group: "all"})
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), base+".eu", &broker.Message{ID: "eu"}); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, sub, 5*time.Second).Message(); m.ID != "eu" {
		t.Errorf("got %q", m.ID)
	}
}

func TestClassicQueuesClaimLess(t *testing.T) {
	b := openBroker(t, "queue_type=classic", Options{})
	c := b.Capabilities()
	if c.AttemptCount || c.DeadLetter || c.NativeDeadLetter || !c.DelayedNack || !c.CrashRedelivery {
		t.Errorf("classic capabilities = %+v", c)
	}
	topic := uniq("classic")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic})
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 5*time.Second)
	if d.Message().Attempt != 0 {
		t.Errorf("classic Attempt = %d, want 0 (not counted)", d.Message().Attempt)
	}
	start := time.Now()
	if err := d.Nack(ctxT(t, 5*time.Second), 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := receive(t, sub, 5*time.Second); d.Message().ID != "c" || time.Since(start) < 100*time.Millisecond {
		t.Errorf("classic delayed nack: %q after %v", d.Message().ID, time.Since(start))
	}
}

// A queue deleted under a subscriber (the broker cancels its consumer) is
// declared again, and consuming resumes.
func TestSubscriberRedeclaresADeletedQueue(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("deleted")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	if err := rabbit(t, b).DeleteSubscription(ctxT(t, 5*time.Second), topic, "g"); err != nil {
		t.Fatal(err)
	}
	got := make(chan *broker.Delivery, 1)
	go func() {
		if d, err := sub.Receive(ctxT(t, 10*time.Second)); err == nil {
			got <- d
		}
	}()
	pub := newPub(t, b)
	deadline := time.Now().Add(10 * time.Second)
	for { // routable again once the subscriber has declared the queue anew
		err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "again"})
		if err == nil {
			break
		}
		if broker.KindOf(err) != semantics.NotFound || time.Now().After(deadline) {
			t.Fatalf("Publish: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case d := <-got:
		if d.Message().ID != "again" {
			t.Errorf("got %q", d.Message().ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the subscriber did not resume after its queue was deleted")
	}
}

// Closing the broker ends Receive and Publish with ErrClosed instead of
// leaving them waiting for a reconnection.
func TestBrokerCloseEndsSubscribersAndPublishers(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("brokerclose")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic})
	pub := newPub(t, b)
	errc := make(chan error, 1)
	go func() {
		_, err := sub.Receive(ctxT(t, 10*time.Second))
		errc <- err
	}()
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if broker.KindOf(err) != semantics.Closed {
			t.Errorf("Receive after Broker.Close = %v, want kind closed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Receive still blocked 5s after Broker.Close")
	}
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{}); broker.KindOf(err) != semantics.Closed {
		t.Errorf("Publish after Broker.Close = %v, want kind closed", err)
	}
}
