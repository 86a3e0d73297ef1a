package kafka

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// TestPublishWithoutGroupIsRefused: a topic nobody declared a group on
// refuses Publish with ErrNoGroup (NotFound), and nothing is written.
func TestPublishWithoutGroupIsRefused(t *testing.T) {
	qb, kb := testQueuekit(t, Options{})
	topic := newTopic(t)
	ctx := testCtx(t, 20*time.Second)
	pub, _ := qb.NewPublisher(ctx)
	err := pub.Publish(ctx, topic, &broker.Message{Payload: []byte("x")})
	if !errors.Is(err, broker.ErrNoGroup) || broker.KindOf(err) != semantics.NotFound {
		t.Fatalf("Publish to a topic without a group: %v, want ErrNoGroup (not found)", err)
	}
	if ok, err := kb.HasGroup(ctx, topic); ok || err != nil {
		t.Errorf("HasGroup = %v, %v", ok, err)
	}
}

// TestDeclareMakesGroupsReceiveLaterMessages declares two groups, publishes,
// and only then subscribes: each group gets every message, also under
// start=latest, where a group that had not been made to exist would start
// at the end of the log when its first member joins.
func TestDeclareMakesGroupsReceiveLaterMessages(t *testing.T) {
	for _, start := range []StartOffset{Earliest, Latest} {
		t.Run(map[StartOffset]string{Earliest: "earliest", Latest: "latest"}[start], func(t *testing.T) {
			qb, kb := testQueuekit(t, Options{StartOffset: start})
			topic := newTopic(t)
			ctx := testCtx(t, 30*time.Second)
			if err := qb.Declare(ctx, topic, "g1", "g2"); err != nil {
				t.Fatal(err)
			}
			if err := qb.Declare(ctx, topic, "g1", "g2"); err != nil {
				t.Fatalf("Declare again: %v", err)
			}
			pub, _ := qb.NewPublisher(ctx)
			if err := pub.Publish(ctx, topic, numbered(6, "")...); err != nil {
				t.Fatal(err)
			}
			for _, g := range []string{"g1", "g2"} {
				s := subscribe(t, kb, broker.SubscriberOptions{Topic: topic, Group: g})
				for range 6 {
					_ = receive(t, s, 10*time.Second).Ack(ctx)
				}
			}
		})
	}
}

// TestDeclareLeavesCommittedGroupsAlone: declaring a group that has consumed
// part of the topic does not move its offsets.
func TestDeclareLeavesCommittedGroupsAlone(t *testing.T) {
	qb, kb := testQueuekit(t, Options{Partitions: 1, CommitInterval: 20 * time.Millisecond})
	topic := newTopic(t)
	ctx := testCtx(t, 30*time.Second)
	s := subscribe(t, kb, broker.SubscriberOptions{Topic: topic, Group: "g"})
	publish(t, kb, topic, numbered(4, "")...)
	for range 2 {
		_ = receive(t, s, 10*time.Second).Ack(ctx)
	}
	waitCommitted(t, kb, topic, "g", 0, 2)
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := qb.Declare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	if got := committed(t, kb, topic, "g", 0); got != 2 {
		t.Fatalf("Declare moved the committed offset to %d, want 2", got)
	}
}

// TestHasGroupSeesOtherClientsGroups: a Broker that declared nothing itself
// finds groups made elsewhere — one that committed offsets (Declare on
// another Broker) and one whose member is subscribed but never committed.
func TestHasGroupSeesOtherClientsGroups(t *testing.T) {
	other := testBroker(t, Options{})
	fresh := testBroker(t, Options{})
	ctx := testCtx(t, 30*time.Second)

	declared := newTopic(t)
	if err := other.Declare(ctx, declared, []string{"g"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := fresh.HasGroup(ctx, declared); !ok || err != nil {
		t.Errorf("HasGroup of a topic whose group committed offsets: %v, %v", ok, err)
	}

	joined := newTopic(t)
	if err := fresh.EnsureTopic(ctx, joined); err != nil {
		t.Fatal(err)
	}
	if ok, err := fresh.HasGroup(ctx, joined); ok || err != nil {
		t.Fatalf("HasGroup before anyone joined: %v, %v", ok, err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(testenv.Kafka(t)...), kgo.ConsumerGroup("raw-"+joined), kgo.ConsumeTopics(joined), kgo.DisableAutoCommit())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pollCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for pollCtx.Err() == nil {
			cl.PollFetches(pollCtx)
		}
	}()
	for deadline := time.Now().Add(20 * time.Second); ; {
		ok, err := fresh.HasGroup(ctx, joined)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("HasGroup never saw a member subscribed to the topic")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSubscribeAllowsPublishAtOnce: right after NewSubscriber returns,
// Publish is accepted and the message reaches the subscriber, under
// start=latest too.
func TestSubscribeAllowsPublishAtOnce(t *testing.T) {
	qb, _ := testQueuekit(t, Options{StartOffset: Latest})
	topic := newTopic(t)
	ctx := testCtx(t, 30*time.Second)
	sub, err := qb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := qb.NewPublisher(ctx)
	if err := pub.Publish(ctx, topic, &broker.Message{Payload: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	d, err := sub.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(d.Message().Payload) != "first" {
		t.Fatalf("got %q", d.Message().Payload)
	}
	_ = d.Ack(ctx)
}

// TestNewSubscriberRefusalsAreUntypedNil: a refused NewSubscriber returns a
// nil interface, never one holding a nil *Subscriber; per-key ordering is
// refused under the retry-topic strategy, naming the setting that works.
func TestNewSubscriberRefusalsAreUntypedNil(t *testing.T) {
	kb := testBroker(t, Options{Nack: NackRetryTopic})
	ctx := testCtx(t, 20*time.Second)
	s, err := kb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: newTopic(t), Group: "g", Ordering: semantics.PerKey})
	if s != nil {
		t.Errorf("NewSubscriber returned %#v with its error", s)
	}
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "nack=pause") {
		t.Errorf("per-key ordering under retry-topic: %v, want unsupported naming nack=pause", err)
	}
	if kb.Capabilities().PerKeyOrdering {
		t.Error("Capabilities claim per-key ordering under the retry-topic strategy")
	}
	s, err = kb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "bad topic"})
	if s != nil || broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("bad topic: %#v, %v", s, err)
	}
}

// TestAsReachesTheClients: the Broker, publisher and subscriber give their
// franz-go clients through As.
func TestAsReachesTheClients(t *testing.T) {
	qb, kb := testQueuekit(t, Options{})
	var cl *kgo.Client
	var back *Broker
	if !qb.As(&cl) || cl != kb.Client() || !qb.As(&back) || back != kb {
		t.Fatal("broker.As did not give the Broker and its client")
	}
	ctx := testCtx(t, 20*time.Second)
	sub, err := qb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: newTopic(t)})
	if err != nil {
		t.Fatal(err)
	}
	var scl *kgo.Client
	if !sub.As(&scl) || scl == nil || scl == kb.Client() {
		t.Error("the subscriber's As did not give its own client")
	}
	pub, _ := qb.NewPublisher(ctx)
	var pcl *kgo.Client
	if !pub.As(&pcl) || pcl != kb.Client() {
		t.Error("the publisher's As did not give the client it produces with")
	}
	var wrong *int
	if qb.As(&wrong) {
		t.Error("As accepted a target of no known type")
	}
}
