package memory_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
)

// numbered returns n messages with IDs prefix0, prefix1, ...
func numbered(prefix string, n int) []*broker.Message {
	out := make([]*broker.Message, n)
	for i := range out {
		out[i] = &broker.Message{ID: prefix + strconv.Itoa(i)}
	}
	return out
}

// Once a group that has a subscriber holds Pace messages, Publish waits for
// the subscriber to take it down, and goes on as soon as it has.
func TestPaceHoldsPublishersForSubscribers(t *testing.T) {
	memory.SetPaceWait(t, time.Hour) // never runs out here
	b := newBroker(t, memory.Options{Pace: 8, Buffer: 100})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	pub := newPub(t, b)
	publish(t, pub, "t", numbered("m", 8)...)

	ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel()
	if err := pub.Publish(ctx, "t", numbered("late", 1)...); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish past the pace = %v, want it to wait (deadline exceeded)", err)
	}
	if st, _ := mem(t, b).Depth("t", "default"); st.Depth() != 8 {
		t.Fatalf("depth %d after a Publish that waited in vain, want 8: %+v", st.Depth(), st)
	}

	done := make(chan error, 1)
	go func() { done <- pub.Publish(bg, "t", numbered("x", 1)...) }()
	mustAck(t, recv(t, sub)) // 7 held: at the pace's wake point
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st, _ := mem(t, b).Depth("t", "default"); st.Depth() != 8 {
		t.Fatalf("depth %d, want 8", st.Depth())
	}
}

// Pacing applies only while a group has subscribers: publish-then-subscribe
// fills the group up to Buffer without waiting, and so does a broker whose
// pacing is off.
func TestPaceNeedsSubscribersAndCanBeTurnedOff(t *testing.T) {
	memory.SetPaceWait(t, time.Hour)
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()

	b := newBroker(t, memory.Options{Pace: 8, Buffer: 100})
	if err := b.Declare(bg, "t", "g"); err != nil {
		t.Fatal(err)
	}
	if err := newPub(t, b).Publish(ctx, "t", numbered("m", 50)...); err != nil {
		t.Fatalf("publish 50 with pace 8 and no subscriber: %v", err)
	}

	off := newBroker(t, memory.Options{Pace: -1, Buffer: 100})
	newSub(t, off, broker.SubscriberOptions{Topic: "t"})
	if err := newPub(t, off).Publish(ctx, "t", numbered("m", 50)...); err != nil {
		t.Fatalf("publish 50 with pacing off and a subscriber: %v", err)
	}
}

// Handlers that publish to their own topic are subscribers waiting for
// their publishers: pacing gives way (after PaceWait) instead of holding
// them for ever, and the group fills up to Buffer.
func TestPaceGivesWayToHandlersPublishingToTheirOwnTopic(t *testing.T) {
	memory.SetPaceWait(t, 20*time.Millisecond)
	b := newBroker(t, memory.Options{Pace: 4, Buffer: 1000})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	pub := newPub(t, b)
	const total = 200
	var published, handled atomic.Int64
	published.Store(2)
	publish(t, pub, "t", numbered("seed", 2)...)
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	all := make(chan struct{})
	h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		// Each message begets up to four more, until total were published.
		for range 4 {
			if published.Add(1) > total {
				break
			}
			if err := pub.Publish(ctx, "t", &broker.Message{}); err != nil {
				return err
			}
		}
		if handled.Add(1) == total {
			close(all)
		}
		return nil
	})
	cctx, stop := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() { consumed <- broker.Consume(cctx, sub, h, broker.ConsumeOptions{Concurrency: 2}) }()
	select {
	case <-all:
	case <-ctx.Done():
		t.Fatalf("handled %d of %d: the handlers' own Publish calls held them", handled.Load(), total)
	}
	stop()
	if err := <-consumed; err != nil {
		t.Fatal(err)
	}
}

func TestPaceURLParameter(t *testing.T) {
	for _, u := range []string{"mem://?pace=0", "mem://?pace=-2", "mem://?pace=x"} {
		if b, err := broker.Open(bg, u); err == nil {
			b.Close(bg)
			t.Errorf("%s accepted", u)
		}
	}
	b1, err := broker.Open(bg, "mem://paced?pace=16")
	if err != nil {
		t.Fatal(err)
	}
	defer b1.Close(bg)
	if _, err := broker.Open(bg, "mem://paced?pace=-1"); err == nil || !strings.Contains(err.Error(), "pace=16") {
		t.Fatalf("second Open with another pace = %v, want an error naming pace=16", err)
	}
	b2, err := broker.Open(bg, "mem://paced") // no pace asked: shares the first's
	if err != nil {
		t.Fatal(err)
	}
	b2.Close(bg)
	off, err := broker.Open(bg, "mem://unpaced?pace=-1")
	if err != nil {
		t.Fatal(err)
	}
	off.Close(bg)
}
