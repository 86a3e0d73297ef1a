package sqs_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

var topicSeq atomic.Int64

// topic returns a fresh topic name for one test.
func topic(t testing.TB) string {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	return fmt.Sprintf("qk-%s-%d-%d", name, time.Now().UnixNano()%1_000_000, topicSeq.Add(1))
}

// open opens an sqs:// broker on the test endpoint with extra URL params,
// and returns it with the adapter's own Broker underneath (for EnsureQueue,
// Depth, Redrive and the SDK client). Long polls last 1s, so that closing a
// subscriber, which waits for its polls, is quick.
func open(t testing.TB, params string) (*broker.Broker, *qsqs.Broker) {
	t.Helper()
	ep := testenv.SQS(t)
	raw := "sqs://?wait_time=1s&endpoint=" + url.QueryEscape(ep)
	if params != "" {
		raw += "&" + params
	}
	b, err := broker.Open(context.Background(), raw)
	if err != nil {
		t.Fatalf("Open(%s): %v", raw, err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b, adapter(t, b)
}

// adapter returns the *sqs.Broker under b.
func adapter(t testing.TB, b *broker.Broker) *qsqs.Broker {
	t.Helper()
	var qb *qsqs.Broker
	if !b.As(&qb) {
		t.Fatalf("%v is not an SQS broker", b)
	}
	return qb
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func publisher(t testing.TB, b *broker.Broker) *broker.Publisher {
	t.Helper()
	p, err := b.NewPublisher(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func subscribe(t testing.TB, b *broker.Broker, opts broker.SubscriberOptions) *broker.Subscriber {
	t.Helper()
	s, err := b.NewSubscriber(ctxT(t, 30*time.Second), opts)
	if err != nil {
		t.Fatalf("Subscribe(%+v): %v", opts, err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// receive returns the next delivery or fails the test after d.
func receive(t testing.TB, s *broker.Subscriber, d time.Duration) *broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	del, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return del
}

// nothing asserts that s delivers nothing within d.
func nothing(t testing.TB, s *broker.Subscriber, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if del, err := s.Receive(ctx); err == nil {
		t.Fatalf("unexpected delivery %s (attempt %d)", del.Message().ID, del.Message().Attempt)
	}
}

// sqsSubscriber returns the *sqs.Subscriber under s.
func sqsSubscriber(t testing.TB, s *broker.Subscriber) *qsqs.Subscriber {
	t.Helper()
	var qs *qsqs.Subscriber
	if !s.As(&qs) {
		t.Fatal("not an SQS subscriber")
	}
	return qs
}
