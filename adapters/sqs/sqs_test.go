package sqs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

func TestOpenRejectsBadURLs(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ url, want string }{
		{"sqs://?bogus=1&region=us-east-1", "unknown URL parameter(s) bogus (valid: create, endpoint, fanout, fifo, max_extension, max_message_size, max_messages, pollers, region, visibility_timeout, wait_time)"},
		{"sqs://orders?region=us-east-1", "takes no host or path"},
		{"sqs://?region=us-east-1&fifo=maybe", `fifo="maybe" is not a boolean`},
		{"sqs://?endpoint=127.0.0.1:4566", "is not an http(s) URL"},
	} {
		_, err := broker.Open(ctx, tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%s) = %v, want an error containing %q", tc.url, err, tc.want)
			continue
		}
		if broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Open(%s) error kind = %v, want invalid argument", tc.url, broker.KindOf(err))
		}
	}
}

// Every URL parameter: values out of its range are InvalidArgument errors
// that name it (and never show a password), its limits are accepted
// (issue 6). Open dials nothing, so no endpoint is needed.
func TestURLParametersOutOfRange(t *testing.T) {
	ctx := context.Background()
	params := []struct {
		name    string
		bad, ok []string
		with    string // other parameters the values need
	}{
		{name: "region", bad: []string{"us east 1", "US-EAST-1", "-eu", "eu-", strings.Repeat("a", 65)}, ok: []string{"eu-west-1", "us-gov-west-1", "local"}},
		{name: "endpoint", bad: []string{"127.0.0.1:4566", "ftp://h", "http://", "http://h:99999", "http://h:0", "http://user:s3cret@h"}, ok: []string{"http://127.0.0.1:4566", "https://sqs.eu-west-1.amazonaws.com"}},
		{name: "fifo", bad: []string{"maybe", "2"}, ok: []string{"true", "false", "1", "0"}},
		{name: "fanout", bad: []string{"yes please", "-1"}, ok: []string{"true", "false"}},
		{name: "create", bad: []string{"never", "3"}, ok: []string{"true", "false"}},
		{name: "wait_time", bad: []string{"-1s", "21s", "1500ms", "soon"}, ok: []string{"0s", "1s", "20s"}},
		{name: "visibility_timeout", bad: []string{"-1s", "0s", "500ms", "12h0m1s", "x"}, ok: []string{"1s", "12h"}},
		{name: "max_messages", bad: []string{"0", "-1", "11", "ten"}, ok: []string{"1", "10"}},
		{name: "pollers", bad: []string{"0", "-2", "65", "many"}, ok: []string{"1", "64"}},
		{name: "max_extension", bad: []string{"-1s", "0s", "13h", "1d"}, ok: []string{"1s", "12h"}},
		{name: "max_message_size", bad: []string{"0", "-1", "1048577", "big"}, ok: []string{"1", "1048576"}},
		{name: "max_message_size", with: "fanout=true", bad: []string{"262145"}, ok: []string{"262144"}},
	}
	// The table covers every parameter the adapter knows: it lists them
	// in its unknown-parameter error.
	_, err := broker.Open(ctx, "sqs://?nosuch=1")
	valid := err.Error()[strings.Index(err.Error(), "(valid: ")+len("(valid: "):]
	valid = valid[:strings.IndexByte(valid, ')')]
	for _, name := range strings.Split(valid, ", ") {
		found := false
		for _, p := range params {
			found = found || p.name == name
		}
		if !found {
			t.Errorf("parameter %s is not in the table", name)
		}
	}
	for _, p := range params {
		base := "sqs://?region=us-east-1"
		if p.name == "region" {
			base = "sqs://?endpoint=http://127.0.0.1:9"
		}
		if p.with != "" {
			base += "&" + p.with
		}
		for _, v := range p.bad {
			raw := base + "&" + p.name + "=" + url.QueryEscape(v)
			_, err := broker.Open(ctx, raw)
			if err == nil {
				t.Errorf("Open(%s) succeeded, want an invalid-argument error", raw)
				continue
			}
			if broker.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), p.name) {
				t.Errorf("Open(%s) = %v (kind %v), want an invalid-argument error naming %s", raw, err, broker.KindOf(err), p.name)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("Open(%s) error shows the password: %v", raw, err)
			}
		}
		for _, v := range p.ok {
			raw := base + "&" + p.name + "=" + url.QueryEscape(v)
			b, err := broker.Open(ctx, raw)
			if err != nil {
				t.Errorf("Open(%s) = %v, want it accepted", raw, err)
				continue
			}
			_ = b.Close(ctx)
		}
	}
}

func TestCapabilities(t *testing.T) {
	for params, want := range map[string]semantics.Capabilities{
		"":                      {ConsumerGroups: true, CrashRedelivery: true, DelayedNack: true, AttemptCount: true, DeadLetter: true, NativeDeadLetter: true, MaxMessageSize: 262144, ScheduledDelivery: true, MaxDelay: 15 * time.Minute},
		"fanout=true&fifo=true": {ConsumerGroups: true, FanOut: true, PerKeyOrdering: true, CrashRedelivery: true, DelayedNack: true, AttemptCount: true, DeadLetter: true, NativeDeadLetter: true, MaxMessageSize: 194560},
	} {
		b, err := broker.Open(context.Background(), "sqs://?region=us-east-1&endpoint=http://127.0.0.1:9&"+params)
		if err != nil {
			t.Fatal(err)
		}
		if got := b.Capabilities(); got != want {
			t.Errorf("%s: Capabilities() = %+v, want %+v", params, got, want)
		}
	}
}

// A message over the limit fails the whole call before any request: the
// broker points at a closed port, so any request would fail differently.
func TestTooLargeRefusedBeforeAnyRequest(t *testing.T) {
	for _, tc := range []struct {
		name, params string
		msg          *broker.Message
		max          int
	}{
		{"text over 256 KiB", "", &broker.Message{Payload: bytes.Repeat([]byte("a"), 256*1024+1)}, 256 * 1024},
		{"headers push it over", "", &broker.Message{Payload: bytes.Repeat([]byte("a"), 256*1024-100), Headers: map[string]string{"h": strings.Repeat("v", 200)}}, 256 * 1024},
		{"base64 over the 1 MiB wire limit", "&max_message_size=1048576", &broker.Message{Payload: bytes.Repeat([]byte{0}, 900*1024)}, 1024 * 1024},
		{"over 190 KiB through SNS", "&fanout=true", &broker.Message{Payload: bytes.Repeat([]byte("a"), 190*1024+1)}, 190 * 1024},
	} {
		b, err := broker.Open(context.Background(), "sqs://?endpoint=http://127.0.0.1:9"+tc.params)
		if err != nil {
			t.Fatal(err)
		}
		p := publisher(t, b)
		ok := &broker.Message{Payload: []byte("fine")}
		err = p.Publish(context.Background(), "q", ok, tc.msg)
		var tl *broker.TooLargeError
		if !errors.Is(err, broker.ErrTooLarge) || !errors.As(err, &tl) || tl.ID != tc.msg.ID || tl.Max != tc.max || tl.Size <= tc.max {
			t.Errorf("%s: Publish = %v, want a TooLargeError for message %s over %d", tc.name, err, tc.msg.ID, tc.max)
		}
	}
}

func TestRoundTripKeepsPayloadHeadersAndIdentity(t *testing.T) {
	t.Parallel()
	b, qb := open(t, "")
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp})
	p := publisher(t, b)

	many := map[string]string{}
	for i := range 14 {
		many[fmt.Sprintf("h%02d", i)] = fmt.Sprintf("value %d", i)
	}
	many["empty"] = ""
	many["bad name!"] = "x"
	many["binary"] = "\x00\xff\x01"
	msgs := []*broker.Message{
		{Key: "k1", Payload: []byte(`{"text":"héllo"}`), Headers: map[string]string{"a": "1", "trace.id": "abc"}},
		{Key: "k2", Payload: []byte{0, 1, 2, 0xff, 0xfe}},
		{Payload: []byte{}},
		{ID: "my-own-id", Payload: []byte("many headers"), Headers: many},
	}
	if err := p.Publish(ctxT(t, 10*time.Second), tp, msgs...); err != nil {
		t.Fatal(err)
	}
	want := map[string]*broker.Message{}
	for _, m := range msgs {
		want[m.ID] = m
	}
	for range msgs {
		d := receive(t, sub, 10*time.Second)
		got := d.Message()
		w := want[got.ID]
		if w == nil {
			t.Fatalf("received unknown message %q", got.ID)
		}
		delete(want, got.ID)
		if !bytes.Equal(got.Payload, w.Payload) || got.Key != w.Key || got.Topic != tp || got.Attempt != 1 {
			t.Errorf("message %s: got payload %q key %q topic %q attempt %d; want %q %q %q 1", got.ID, got.Payload, got.Key, got.Topic, got.Attempt, w.Payload, w.Key, tp)
		}
		if !got.PublishedAt.Equal(w.PublishedAt) {
			t.Errorf("message %s: PublishedAt %v, want %v", got.ID, got.PublishedAt, w.PublishedAt)
		}
		if len(got.Headers) != len(w.Headers) {
			t.Errorf("message %s: %d headers %v, want %d %v", got.ID, len(got.Headers), got.Headers, len(w.Headers), w.Headers)
		}
		for k, v := range w.Headers {
			if got.Headers[k] != v {
				t.Errorf("message %s: header %q = %q, want %q", got.ID, k, got.Headers[k], v)
			}
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Errorf("second Ack = %v, want nil", err)
		}
		if err := d.Nack(context.Background(), 0); !errors.Is(err, broker.ErrAlreadySettled) {
			t.Errorf("Nack after Ack = %v, want ErrAlreadySettled", err)
		}
	}
	// Close waits for the deletes the Acks queued.
	if err := sub.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	depth, err := qb.Depth(context.Background(), tp, "")
	if err != nil || depth.Total() != 0 {
		t.Errorf("Depth after acking everything and closing = %+v, %v; want all zero", depth, err)
	}
}

// countingTransport counts the SQS operations sent through it.
type countingTransport struct {
	mu  sync.Mutex
	ops map[string]int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	op := r.Header.Get("X-Amz-Target") // "AmazonSQS.SendMessageBatch"
	c.mu.Lock()
	c.ops[op[strings.LastIndexByte(op, '.')+1:]]++
	c.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

func (c *countingTransport) count(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ops[op]
}

// newCounted returns a broker over an SQS client whose requests are
// counted, through the typed constructor.
func newCounted(t *testing.T, opts qsqs.Options) (*broker.Broker, *countingTransport) {
	ct := &countingTransport{ops: map[string]int{}}
	client := awssqs.New(awssqs.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(testenv.SQS(t)),
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
		HTTPClient:   &http.Client{Transport: ct},
	})
	qb, err := qsqs.New(client, opts)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(qb)
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b, ct
}

func TestConcurrentPublishesShareBatchesAndAcksToo(t *testing.T) {
	t.Parallel()
	b, ct := newCounted(t, qsqs.Options{WaitTime: time.Second})
	tp := topic(t)
	if err := b.Declare(context.Background(), tp); err != nil {
		t.Fatal(err)
	}
	p := publisher(t, b)
	if err := p.Publish(context.Background(), tp, &broker.Message{Payload: []byte("warm-up")}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.Publish(context.Background(), tp, &broker.Message{Payload: []byte(fmt.Sprint("m", i))})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	reqs := ct.count("SendMessageBatch") - 1
	if reqs >= n/2 {
		t.Errorf("%d concurrent single-message Publish calls took %d SendMessageBatch requests; want them batched (< %d)", n, reqs, n/2)
	}
	t.Logf("%d publishes in %d requests", n, reqs)

	// A visibility timeout well within the wait below, so that messages
	// whose receive failed on the way come back in time. Seen once in CI,
	// with fauxqs loaded by the parallel conformance runs: ten messages (one
	// receive's worth) did not come within the default 30 s, as when a
	// receive's answer is lost after fauxqs hid them. Messages are counted
	// by payload, so that a redelivery cannot stand in for a message that
	// never came.
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Prefetch: 100, AckTimeout: 5 * time.Second})
	var mu sync.Mutex
	seen := map[string]bool{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			mu.Lock()
			seen[string(m.Payload)] = true
			all := len(seen) == n+1
			mu.Unlock()
			if all {
				cancel()
			}
			return nil
		}), broker.ConsumeOptions{Concurrency: 32})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		cancel()
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("handled %d of %d messages", len(seen), n+1)
	}
	if dels := ct.count("DeleteMessageBatch"); dels >= n/2 {
		t.Errorf("%d acks took %d DeleteMessageBatch requests; want them batched", n+1, dels)
	} else {
		t.Logf("%d acks in %d requests", n+1, dels)
	}
}

func TestPerEntryFailureIsAPublishError(t *testing.T) {
	t.Parallel()
	b, qb := open(t, "")
	tp := topic(t)
	info, err := qb.EnsureQueue(context.Background(), qsqs.QueueName(tp, false), qsqs.QueueSpec{})
	if err != nil {
		t.Fatal(err)
	}
	// The queue refuses messages over 1 KiB: a per-entry failure.
	if _, err := qb.Client().SetQueueAttributes(context.Background(), &awssqs.SetQueueAttributesInput{
		QueueUrl: &info.URL, Attributes: map[string]string{"MaximumMessageSize": "1024"},
	}); err != nil {
		t.Fatal(err)
	}
	p := publisher(t, b)
	msgs := []*broker.Message{
		{Payload: []byte("small 0")},
		{Payload: bytes.Repeat([]byte("x"), 2000)},
		{Payload: []byte("small 2")},
	}
	err = p.Publish(context.Background(), tp, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].Index != 1 || pe.Failed[0].ID != msgs[1].ID {
		t.Fatalf("Publish = %v, want a PublishError for message #1 only", err)
	}
	if k := broker.KindOf(pe.Failed[0].Err); k != semantics.InvalidArgument {
		t.Errorf("failure kind = %v, want invalid argument", k)
	}
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp})
	got := map[string]bool{}
	for range 2 {
		d := receive(t, sub, 10*time.Second)
		got[d.Message().ID] = true
		_ = d.Ack(context.Background())
	}
	if !got[msgs[0].ID] || !got[msgs[2].ID] {
		t.Errorf("received %v, want the two accepted messages", got)
	}
}

func TestNackDelaysRedeliveryAndCountsAttempts(t *testing.T) {
	t.Parallel()
	b, _ := open(t, "")
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, AckTimeout: 5 * time.Second})
	p := publisher(t, b)
	if err := p.Publish(context.Background(), tp, &broker.Message{Payload: []byte("retry me")}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 10*time.Second)
	if d.Message().Attempt != 1 {
		t.Fatalf("first attempt = %d", d.Message().Attempt)
	}
	nacked := time.Now()
	if err := d.Nack(context.Background(), 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(context.Background()); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Errorf("Ack after Nack = %v, want ErrAlreadySettled", err)
	}
	d2 := receive(t, sub, 10*time.Second)
	if waited := time.Since(nacked); waited < 1500*time.Millisecond {
		t.Errorf("redelivered after %v, want no sooner than the 1.5s nack delay", waited)
	}
	if d2.Message().ID != d.Message().ID || d2.Message().Attempt != 2 {
		t.Errorf("redelivery = %s attempt %d, want %s attempt 2", d2.Message().ID, d2.Message().Attempt, d.Message().ID)
	}
	if err := d2.Nack(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	d3 := receive(t, sub, 10*time.Second)
	if d3.Message().Attempt != 3 {
		t.Errorf("attempt after Nack(0) = %d, want 3", d3.Message().Attempt)
	}
	_ = d3.Ack(context.Background())
}

// A handler that runs longer than the visibility timeout keeps its message:
// nobody else receives it meanwhile, and its Ack still deletes it.
func TestVisibilityIsExtendedWhileHeld(t *testing.T) {
	t.Parallel()
	b, qb := open(t, "")
	tp := topic(t)
	holder := subscribe(t, b, broker.SubscriberOptions{Topic: tp, AckTimeout: 2 * time.Second, Prefetch: 1})
	other := subscribe(t, b, broker.SubscriberOptions{Topic: tp, AckTimeout: 2 * time.Second})
	p := publisher(t, b)
	if err := p.Publish(context.Background(), tp, &broker.Message{Payload: []byte("long job")}); err != nil {
		t.Fatal(err)
	}
	var d *broker.Delivery
	ctx := ctxT(t, 20*time.Second) // the receivers outlive every check below
	got := make(chan *broker.Delivery, 2)
	for _, s := range []*broker.Subscriber{holder, other} {
		go func() {
			if d, err := s.Receive(ctx); err == nil {
				got <- d
			}
		}()
	}
	d = <-got
	// Hold it for 2.5 visibility timeouts.
	select {
	case d2 := <-got:
		t.Fatalf("message delivered twice while held: attempts %d and %d", d.Message().Attempt, d2.Message().Attempt)
	case <-time.After(5 * time.Second):
	}
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("Ack after 5s with a 2s visibility timeout: %v", err)
	}
	// Still receiving on the subscriber that did not get it: no redelivery
	// after the Ack either.
	select {
	case d2 := <-got:
		t.Fatalf("acked message delivered again (attempt %d)", d2.Message().Attempt)
	case <-time.After(2500 * time.Millisecond):
	}
	depth, err := qb.Depth(context.Background(), tp, "")
	if err != nil || depth.Total() != 0 {
		t.Errorf("Depth = %+v, %v; want empty", depth, err)
	}
}

// A consumer that stops without settling (Close stands in for a crash: the
// extension stops) leaves the message to be delivered again.
func TestUnsettledMessagesComeBackAfterClose(t *testing.T) {
	t.Parallel()
	b, qb := open(t, "")
	tp := topic(t)
	first := subscribe(t, b, broker.SubscriberOptions{Topic: tp, AckTimeout: time.Second})
	p := publisher(t, b)
	msgs := []*broker.Message{{Payload: []byte("a")}, {Payload: []byte("b")}}
	if err := p.Publish(context.Background(), tp, msgs...); err != nil {
		t.Fatal(err)
	}
	held := receive(t, first, 10*time.Second)
	closed := time.Now()
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Receive(context.Background()); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Receive after Close = %v, want ErrClosed", err)
	}
	// The other message, received but never handed out, is visible again
	// at once; the held one stays hidden until its timeout.
	if d, err := qb.Depth(context.Background(), tp, ""); err != nil || d.Visible != 1 || d.InFlight != 1 {
		t.Errorf("depth right after Close = %+v, %v; want 1 visible (released) and 1 in flight (held)", d, err)
	}
	second := subscribe(t, b, broker.SubscriberOptions{Topic: tp, AckTimeout: 5 * time.Second})
	seen := map[string]int{}
	for range 2 {
		d := receive(t, second, 10*time.Second)
		seen[d.Message().ID] = d.Message().Attempt
		if d.Message().ID == held.Message().ID && time.Since(closed) < 500*time.Millisecond {
			t.Errorf("the held message came back %v after Close, before its visibility timeout", time.Since(closed))
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if seen[held.Message().ID] != 2 {
		t.Errorf("held message redelivered with attempt %d, want 2 (seen %v)", seen[held.Message().ID], seen)
	}
	if len(seen) != 2 {
		t.Errorf("received %v, want both messages", seen)
	}
	// Settling the stale delivery after its redelivery was acked is harmless.
	_ = held.Ack(context.Background())
}

func TestPerKeyOrderingNeedsFIFO(t *testing.T) {
	b, err := broker.Open(context.Background(), "sqs://?endpoint=http://127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: "t", Ordering: semantics.PerKey})
	if broker.KindOf(err) != semantics.Unsupported || !strings.Contains(err.Error(), "fifo=true") {
		t.Errorf("per-key subscriber on standard queues = %v, want an unsupported error naming fifo=true", err)
	}
}

func TestCreateFalseReportsMissingQueue(t *testing.T) {
	b, _ := open(t, "create=false")
	p := publisher(t, b)
	err := p.Publish(context.Background(), topic(t), &broker.Message{Payload: []byte("x")})
	if broker.KindOf(err) != semantics.NotFound || !errors.Is(err, broker.ErrNoGroup) {
		t.Errorf("Publish to a missing queue with create=false = %v, want not found (ErrNoGroup)", err)
	}
}

func TestBrokerDownFailsFast(t *testing.T) {
	b, err := broker.Open(context.Background(), "sqs://?endpoint=http://127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	p := publisher(t, b)
	start := time.Now()
	err = p.Publish(ctxT(t, 20*time.Second), "q", &broker.Message{Payload: []byte("x")})
	if err == nil || broker.KindOf(err) != semantics.Transient {
		t.Errorf("Publish with the endpoint down = %v (kind %v), want a transient error", err, broker.KindOf(err))
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("took %v to fail", time.Since(start))
	}
	_, err = b.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: "q"})
	if err == nil {
		t.Error("NewSubscriber with the endpoint down succeeded")
	}
}

// Close waits for its long polls to end, so no message goes to a poll that
// nobody reads: one published right after Close is not hidden for the
// closed subscriber's 30s visibility timeout.
func TestCloseLeavesNoPollBehind(t *testing.T) {
	t.Parallel()
	b, _ := open(t, "wait_time=2s")
	tp := topic(t)
	first := subscribe(t, b, broker.SubscriberOptions{Topic: tp, AckTimeout: 30 * time.Second})
	nothing(t, first, 300*time.Millisecond) // its pollers are waiting in long polls now
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := publisher(t, b)
	m := &broker.Message{Payload: []byte("after close")}
	if err := p.Publish(context.Background(), tp, m); err != nil {
		t.Fatal(err)
	}
	second := subscribe(t, b, broker.SubscriberOptions{Topic: tp})
	if got := receive(t, second, 10*time.Second).Message(); got.ID != m.ID || got.Attempt != 1 {
		t.Errorf("got %s attempt %d, want %s attempt 1", got.ID, got.Attempt, m.ID)
	}
}

// A delivery held past max_extension is no longer extended: SQS delivers
// it again, and the prefetch slot it held is free (Prefetch 1 here).
func TestMaxExtensionLetsGo(t *testing.T) {
	t.Parallel()
	b, _ := open(t, "max_extension=1500ms&wait_time=0s")
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, AckTimeout: time.Second, Prefetch: 1})
	p := publisher(t, b)
	if err := p.Publish(context.Background(), tp, &broker.Message{Payload: []byte("forgotten")}); err != nil {
		t.Fatal(err)
	}
	first := receive(t, sub, 10*time.Second)
	again := receive(t, sub, 10*time.Second) // never settled the first: needs the freed slot
	if again.Message().ID != first.Message().ID || again.Message().Attempt != 2 {
		t.Errorf("got %s attempt %d, want %s again with attempt 2", again.Message().ID, again.Message().Attempt, first.Message().ID)
	}
	if err := again.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// receivesInFlight counts the ReceiveMessage requests under way, and the
// most there were at once.
type receivesInFlight struct {
	mu       sync.Mutex
	now, max int
}

func (c *receivesInFlight) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".ReceiveMessage") {
		return http.DefaultTransport.RoundTrip(r)
	}
	c.mu.Lock()
	c.now++
	c.max = max(c.max, c.now)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.now--
		c.mu.Unlock()
	}()
	return http.DefaultTransport.RoundTrip(r)
}

func (c *receivesInFlight) counts() (now, most int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now, c.max
}

// An idle subscriber polls with IdlePollers; a backlog (receives that come
// back full) brings more pollers, up to Pollers, and they leave once the
// backlog is gone.
func TestPollersJoinForABacklogAndLeave(t *testing.T) {
	t.Parallel()
	rt := &receivesInFlight{}
	client := awssqs.New(awssqs.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(testenv.SQS(t)),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
		HTTPClient:  &http.Client{Transport: rt},
	})
	const pollers = 4
	qb, err := qsqs.New(client, qsqs.Options{WaitTime: time.Second, Pollers: pollers})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(qb)
	defer b.Close(context.Background())
	tp := topic(t)
	if err := b.Declare(context.Background(), tp); err != nil {
		t.Fatal(err)
	}
	msgs := make([]*broker.Message, 200)
	for i := range msgs {
		msgs[i] = &broker.Message{Payload: []byte{byte(i)}}
	}
	if err := publisher(t, b).Publish(context.Background(), tp, msgs...); err != nil {
		t.Fatal(err)
	}
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp})
	for range msgs {
		if err := receive(t, sub, 10*time.Second).Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if _, most := rt.counts(); most <= qsqs.IdlePollers || most > pollers {
		t.Errorf("at most %d receives at once while draining a backlog, want more than %d (IdlePollers) and at most %d (Pollers)", most, qsqs.IdlePollers, pollers)
	}
	// The extra pollers leave after their next receive, which finds the
	// queue empty and ends after its 1s long poll.
	deadline := time.Now().Add(10 * time.Second)
	for now, _ := rt.counts(); now > qsqs.IdlePollers; now, _ = rt.counts() {
		if time.Now().After(deadline) {
			t.Fatalf("%d receives under way on an empty queue 10s after the backlog, want %d (IdlePollers)", now, qsqs.IdlePollers)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
