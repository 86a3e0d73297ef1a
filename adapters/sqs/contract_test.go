package sqs_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// Queue mode: a topic's one group is its queue. Publishing to a queue that
// does not exist is refused with ErrNoGroup and creates nothing; once
// declared, what is published reaches it.
func TestQueueModePublishNeedsTheQueue(t *testing.T) {
	t.Parallel()
	b, qb := open(t, "")
	tp := topic(t)
	p := publisher(t, b)
	err := p.Publish(context.Background(), tp, &broker.Message{Payload: []byte("nobody")})
	if !errors.Is(err, broker.ErrNoGroup) || broker.KindOf(err) != semantics.NotFound {
		t.Fatalf("Publish to a missing queue = %v (kind %v), want ErrNoGroup", err, broker.KindOf(err))
	}
	if _, err := qb.QueueDepth(context.Background(), qsqs.QueueName(tp, false)); !errors.Is(err, broker.ErrNoGroup) {
		t.Fatalf("the refused Publish left a queue behind (QueueDepth = %v)", err)
	}
	if err := b.Declare(context.Background(), tp, "any", "group"); err != nil {
		t.Fatal(err)
	}
	m := &broker.Message{Payload: []byte("declared")}
	if err := p.Publish(context.Background(), tp, m); err != nil {
		t.Fatalf("Publish after Declare: %v", err)
	}
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Group: "other"})
	if got := receive(t, sub, 10*time.Second).Message(); got.ID != m.ID {
		t.Errorf("got %s, want %s", got.ID, m.ID)
	}
}

// Fan-out mode: SNS drops what is published to a topic without a
// subscription, so Publish refuses it (ListSubscriptionsByTopic) until a
// group is declared; each declared group then gets every message, though
// its subscriber comes later.
func TestFanOutPublishNeedsAGroup(t *testing.T) {
	t.Parallel()
	b, _ := open(t, "fanout=true")
	tp := topic(t)
	p := publisher(t, b)
	if err := p.Publish(context.Background(), tp, &broker.Message{Payload: []byte("x")}); !errors.Is(err, broker.ErrNoGroup) {
		t.Fatalf("Publish to a missing SNS topic = %v, want ErrNoGroup", err)
	}
	if err := b.Declare(context.Background(), tp); err != nil { // the topic, no group
		t.Fatal(err)
	}
	if err := p.Publish(context.Background(), tp, &broker.Message{Payload: []byte("x")}); !errors.Is(err, broker.ErrNoGroup) {
		t.Fatalf("Publish to an SNS topic without subscriptions = %v, want ErrNoGroup", err)
	}
	if err := b.Declare(context.Background(), tp, "billing", "audit"); err != nil {
		t.Fatal(err)
	}
	m := &broker.Message{Payload: []byte("to both")}
	if err := p.Publish(context.Background(), tp, m); err != nil {
		t.Fatalf("Publish after Declare: %v", err)
	}
	for _, g := range []string{"billing", "audit"} {
		sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Group: g})
		if got := receive(t, sub, 10*time.Second).Message(); got.ID != m.ID {
			t.Errorf("group %s got %s, want %s", g, got.ID, m.ID)
		}
	}
}

// Backlog works on a URL-opened broker in both modes: visible, in-flight
// and delayed counts of the group's queue, NotFound for a group that does
// not exist (issue 12).
func TestBacklog(t *testing.T) {
	t.Parallel()
	for _, params := range []string{"", "fanout=true"} {
		t.Run("params="+params, func(t *testing.T) {
			t.Parallel()
			b, _ := open(t, params)
			tp := topic(t)
			sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Group: "g", Prefetch: 1})
			p := publisher(t, b)
			for i := range 4 {
				if err := p.Publish(context.Background(), tp, &broker.Message{ID: "m" + string(rune('0'+i)), Payload: []byte("x")}); err != nil {
					t.Fatal(err)
				}
			}
			held := receive(t, sub, 10*time.Second)
			if err := held.Nack(context.Background(), time.Minute); err != nil {
				t.Fatal(err)
			}
			receive(t, sub, 10*time.Second) // held unsettled: Prefetch 1 makes it the only one
			// Now: 2 visible, 1 in flight (second), 1 nacked with a delay.
			// The nacked one counts as in flight on SQS: it is hidden,
			// not delayed (only a DelaySeconds send is "delayed").
			bl, err := b.Backlog(context.Background(), tp, "g")
			if err != nil {
				t.Fatal(err)
			}
			if bl.Pending != 2 || bl.InFlight != 2 || bl.Delayed != 0 || bl.Consumers != -1 || bl.Total() != 4 {
				t.Errorf("Backlog = %+v, want 2 pending, 2 in flight, 0 delayed, consumers unknown", bl)
			}
			_, err = b.Backlog(context.Background(), topic(t), "nobody")
			if broker.KindOf(err) != semantics.NotFound {
				t.Errorf("Backlog of a missing group = %v, want NotFound", err)
			}
		})
	}
}

// Under at-most-once, Ack returns once SQS deleted the message: nothing of
// it is left in the queue, visible or in flight, when Ack returns.
func TestAtMostOnceAckHasDeleted(t *testing.T) {
	t.Parallel()
	b, qb := open(t, "")
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Guarantee: semantics.AtMostOnce, Prefetch: 1})
	p := publisher(t, b)
	if err := p.Publish(context.Background(), tp, &broker.Message{Payload: []byte("once at most")}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 10*time.Second)
	if err := d.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if depth, err := qb.Depth(context.Background(), tp, ""); err != nil || depth.Total() != 0 {
		t.Errorf("depth right after an at-most-once Ack = %+v, %v; want nothing left", depth, err)
	}
}

// Under at-most-once, a delivery whose visibility timeout may have ended
// is not acked: SQS takes a delete with the receipt of an earlier receive
// without deleting the message, so acking it would let the message be
// handled twice (once by this consumer, once by the one that received it
// again).
func TestAtMostOnceRefusesAckAfterVisibilityEnded(t *testing.T) {
	t.Parallel()
	b, qb := open(t, "")
	tp := topic(t)
	amo := broker.SubscriberOptions{Topic: tp, Guarantee: semantics.AtMostOnce, AckTimeout: time.Second, Prefetch: 1}
	first := subscribe(t, b, amo)
	p := publisher(t, b)
	m := &broker.Message{Payload: []byte("slow consumer")}
	if err := p.Publish(context.Background(), tp, m); err != nil {
		t.Fatal(err)
	}
	stale := receive(t, first, 10*time.Second)
	// Closing stops the extension of the delivery it handed out (which can
	// still be settled): its visibility ends after a second.
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := subscribe(t, b, amo)
	again := receive(t, second, 10*time.Second)
	if again.Message().ID != m.ID || again.Message().Attempt != 2 {
		t.Fatalf("got %s attempt %d, want %s again", again.Message().ID, again.Message().Attempt, m.ID)
	}
	if err := stale.Ack(context.Background()); err == nil {
		t.Fatal("at-most-once Ack of a delivery received again elsewhere returned nil: both consumers would handle it")
	}
	if err := again.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	nothing(t, second, 2*time.Second)
	if depth, err := qb.Depth(context.Background(), tp, ""); err != nil || depth.Total() != 0 {
		t.Errorf("depth = %+v, %v; want nothing left", depth, err)
	}
}

// failingTransport fails the requests of one SQS operation while fail is set.
type failingTransport struct {
	op   string
	fail atomic.Bool
}

func (f *failingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if f.fail.Load() && strings.HasSuffix(r.Header.Get("X-Amz-Target"), "."+f.op) {
		return nil, errors.New("injected failure")
	}
	return http.DefaultTransport.RoundTrip(r)
}

// failingBroker opens a broker over a client whose DeleteMessageBatch
// requests fail while the returned transport's fail is set.
func failingBroker(t *testing.T) (*failingTransport, *broker.Broker, *qsqs.Broker) {
	t.Helper()
	ft := &failingTransport{op: "DeleteMessageBatch"}
	client := awssqs.New(awssqs.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(testenv.SQS(t)),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
		HTTPClient:  &http.Client{Transport: ft}, RetryMaxAttempts: 1,
	})
	qb, err := qsqs.New(client, qsqs.Options{WaitTime: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(qb)
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return ft, b, qb
}

// A failed Ack (at-most-once, where Ack waits for the delete) leaves the
// delivery unsettled (package broker's settling): trying it again deletes
// the message; settling the other way afterwards is refused.
func TestAckRetriedAfterAFailure(t *testing.T) {
	t.Parallel()
	ft, b, qb := failingBroker(t)
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Guarantee: semantics.AtMostOnce})
	if err := publisher(t, b).Publish(context.Background(), tp, &broker.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 10*time.Second)
	ft.fail.Store(true)
	if err := d.Ack(context.Background()); err == nil {
		t.Fatal("Ack through a failing transport returned nil")
	}
	ft.fail.Store(false)
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("Ack tried again: %v", err)
	}
	if err := d.Nack(context.Background(), 0); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Errorf("Nack after the Ack = %v, want ErrAlreadySettled", err)
	}
	if depth, err := qb.Depth(context.Background(), tp, ""); err != nil || depth.Total() != 0 {
		t.Errorf("depth = %+v, %v; want the message deleted", depth, err)
	}
}

// A subscriber whose Prefetch is smaller than a receive (MaxMessages 10)
// keeps receiving into the room it has while it holds deliveries
// unsettled: it asked for a full receive's worth of room before, and
// waited for it for as long as it held any delivery.
func TestSmallPrefetchKeepsReceivingWhileHolding(t *testing.T) {
	t.Parallel()
	b, _ := open(t, "")
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Prefetch: 3})
	p := publisher(t, b)
	first := &broker.Message{Payload: []byte("held")}
	if err := p.Publish(context.Background(), tp, first); err != nil {
		t.Fatal(err)
	}
	held := receive(t, sub, 10*time.Second) // never settled until the end
	later := []*broker.Message{{Payload: []byte("a")}, {Payload: []byte("b")}}
	if err := p.Publish(context.Background(), tp, later...); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range later {
		d := receive(t, sub, 10*time.Second)
		got[d.Message().ID] = true
		_ = d.Ack(context.Background())
	}
	if !got[later[0].ID] || !got[later[1].ID] {
		t.Errorf("received %v, want both later messages", got)
	}
	_ = held.Ack(context.Background())
}

// The driver returns an untyped nil with its errors, and As reaches the
// SDK clients.
func TestNoTypedNilAndAs(t *testing.T) {
	b, err := broker.Open(context.Background(), "sqs://?endpoint=http://127.0.0.1:9&fanout=true")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	qb := adapter(t, b)
	s, err := qb.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: "t", Group: "g", Ordering: semantics.PerKey})
	if err == nil || s != nil {
		t.Errorf("NewSubscriber refusing per-key order = %#v, %v; want a nil interface and an error", s, err)
	}
	var sc *awssqs.Client
	var nc *sns.Client
	if !b.As(&sc) || sc != qb.Client() || !b.As(&nc) || nc == nil {
		t.Errorf("As: *sqs.Client %v, *sns.Client %v", sc, nc)
	}
	plain, err := broker.Open(context.Background(), "sqs://?endpoint=http://127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close(context.Background())
	var none *sns.Client
	if plain.As(&none) {
		t.Error("As(*sns.Client) succeeded in queue mode")
	}
}

// gatedTransport holds the requests of one SQS operation until released,
// and says when one arrives.
type gatedTransport struct {
	op      string
	arrived chan struct{}
	release chan struct{}
}

func (g *gatedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.Header.Get("X-Amz-Target"), "."+g.op) {
		g.arrived <- struct{}{}
		<-g.release
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Publisher.Close lets a Publish under way finish, waiting no longer than
// its ctx; past that, Close returns and says so, and the Publish ends when
// SQS answers its request (or fails with kind Closed where it was waiting
// for another caller's request).
func TestPublisherCloseFlushesPublishesUnderWay(t *testing.T) {
	t.Parallel()
	for _, patient := range []bool{true, false} {
		g := &gatedTransport{op: "SendMessageBatch", arrived: make(chan struct{}, 1), release: make(chan struct{})}
		client := awssqs.New(awssqs.Options{
			Region: "us-east-1", BaseEndpoint: aws.String(testenv.SQS(t)),
			Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
			HTTPClient:  &http.Client{Transport: g}, RetryMaxAttempts: 1,
		})
		qb, err := qsqs.New(client, qsqs.Options{WaitTime: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		b := broker.New(qb)
		tp := topic(t)
		if err := b.Declare(context.Background(), tp); err != nil {
			t.Fatal(err)
		}
		pub := publisher(t, b)
		published := make(chan error, 1)
		go func() {
			published <- pub.Publish(context.Background(), tp, &broker.Message{Payload: []byte("under way")})
		}()
		<-g.arrived
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		if patient {
			cancel()
			ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
			go func() { time.Sleep(200 * time.Millisecond); close(g.release) }() // the answer comes while Close waits
		}
		closing := time.Now()
		cerr := pub.Close(ctx)
		closed := time.Since(closing)
		cancel()
		if !patient {
			close(g.release)
		}
		perr := <-published
		if patient {
			if cerr != nil || perr != nil {
				t.Errorf("Close waiting for a publish under way = %v, the publish = %v; want both nil", cerr, perr)
			}
			if d, err := qb.Depth(context.Background(), tp, ""); err != nil || d.Visible != 1 {
				t.Errorf("depth after the flushed publish = %+v, %v; want the message", d, err)
			}
		} else {
			if cerr == nil || closed > 5*time.Second {
				t.Errorf("Close out of time = %v after %v; want an error, at the end of its ctx", cerr, closed)
			}
			if perr != nil && broker.KindOf(perr) != semantics.Closed {
				t.Errorf("the publish abandoned by Close = %v (kind %v); want nil or kind Closed", perr, broker.KindOf(perr))
			}
		}
		_ = b.Close(context.Background())
	}
}

// slowTransport makes the requests of one SQS operation take delay
// longer, and counts those sent and answered.
type slowTransport struct {
	op                string
	delay             time.Duration
	started, finished atomic.Int64
}

func (f *slowTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.Header.Get("X-Amz-Target"), "."+f.op) {
		return http.DefaultTransport.RoundTrip(r)
	}
	f.started.Add(1)
	defer f.finished.Add(1)
	time.Sleep(f.delay) // a slow network, for Close to wait out
	return http.DefaultTransport.RoundTrip(r)
}

// At-least-once, Ack queues the delete and returns without waiting for it
// (so one handler at a time does not wait a round trip per message), and
// Close waits for the deletes queued: what was acked before Close is gone
// from the queue once Close returns.
func TestAckQueuesTheDeleteAndCloseWaitsForIt(t *testing.T) {
	t.Parallel()
	st := &slowTransport{op: "DeleteMessageBatch", delay: 300 * time.Millisecond}
	client := awssqs.New(awssqs.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(testenv.SQS(t)),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
		HTTPClient:  &http.Client{Transport: st},
	})
	// Short polling: Close waits for no long poll, only for the deletes.
	qb, err := qsqs.New(client, qsqs.Options{WaitTime: -1})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(qb)
	defer b.Close(context.Background())
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp})
	msgs := make([]*broker.Message, 25)
	for i := range msgs {
		msgs[i] = &broker.Message{Payload: []byte{byte(i)}}
	}
	if err := publisher(t, b).Publish(context.Background(), tp, msgs...); err != nil {
		t.Fatal(err)
	}
	for range msgs {
		if err := receive(t, sub, 10*time.Second).Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := sub.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if started, finished := st.started.Load(), st.finished.Load(); started == 0 || finished != started {
		t.Fatalf("Close returned with %d of %d DeleteMessageBatch requests answered", finished, started)
	}
	if depth, err := qb.Depth(context.Background(), tp, ""); err != nil || depth.Total() != 0 {
		t.Errorf("depth right after Close = %+v, %v; want every acked message deleted", depth, err)
	}
}

// At-least-once, a queued delete that fails loses nothing: Ack returned
// nil, and the message comes back once its visibility timeout ends.
func TestFailedQueuedDeleteRedelivers(t *testing.T) {
	t.Parallel()
	ft, b, _ := failingBroker(t)
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, AckTimeout: time.Second})
	m := &broker.Message{Payload: []byte("ack lost")}
	if err := publisher(t, b).Publish(context.Background(), tp, m); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 10*time.Second)
	ft.fail.Store(true)
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("at-least-once Ack = %v, want nil (the delete is queued)", err)
	}
	again := receive(t, sub, 10*time.Second)
	ft.fail.Store(false)
	if again.Message().ID != m.ID || again.Message().Attempt != 2 {
		t.Fatalf("got %s attempt %d, want %s again with attempt 2", again.Message().ID, again.Message().Attempt, m.ID)
	}
	if err := again.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
}
