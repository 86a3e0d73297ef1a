package sqs_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	awstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
	dlq_ "github.com/queuekit/queuekit/middleware/dlq"
	"github.com/queuekit/queuekit/semantics"
)

// waitDepth polls queue's depth until ok says yes (external broker state:
// polling with a deadline is the only way).
func waitDepth(t *testing.T, b *qsqs.Broker, queue string, ok func(qsqs.Depth) bool) qsqs.Depth {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		d, err := b.QueueDepth(context.Background(), queue)
		if err != nil {
			t.Fatal(err)
		}
		if ok(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %s depth stayed %+v", queue, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Messages that exhaust MaxAttempts land in the native dead-letter queue,
// and Redrive moves them back with their payload, ID, key and headers,
// deleting each from the dead-letter queue only once its send succeeded.
// Like `queuekit redrive` (middleware/dlq), it stamps a new PublishedAt
// and counts the redrive in queuekit-redrives (issue 19).
func TestDeadLetterThenRedriveKeepsIdentityAndCountsRedrives(t *testing.T) {
	t.Parallel()
	bb, b := open(t, "")
	tp := topic(t)
	opts := broker.SubscriberOptions{Topic: tp, MaxAttempts: 2, AckTimeout: 5 * time.Second}
	main := subscribe(t, bb, opts)
	dlq := b.DeadLetterQueue(opts)
	if want := qsqs.QueueName(tp+".dlq", false); dlq != want {
		t.Fatalf("DeadLetterQueue = %q, want %q", dlq, want)
	}
	headers := map[string]string{"trace": "t-1"}
	for i := range 12 {
		headers[fmt.Sprintf("x-%d", i)] = fmt.Sprint(i)
	}
	msgs := []*broker.Message{
		{Key: "k", Payload: []byte{0, 1, 2, 0xff}, Headers: map[string]string{"kind": "binary"}},
		{Payload: []byte("many headers"), Headers: headers},
		{Key: "text", Payload: []byte(`{"order":42}`)},
	}
	p := publisher(t, bb)
	if err := p.Publish(context.Background(), tp, msgs...); err != nil {
		t.Fatal(err)
	}
	attempts := map[string][]int{}
	for range len(msgs) * 2 {
		d := receive(t, main, 10*time.Second)
		attempts[d.Message().ID] = append(attempts[d.Message().ID], d.Message().Attempt)
		if err := d.Nack(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range msgs {
		if got := attempts[m.ID]; len(got) != 2 || got[0] != 1 || got[1] != 2 {
			t.Errorf("%s delivered with attempts %v, want [1 2]", m.ID, got)
		}
	}
	// The pollers' next receive makes SQS move them (maxReceiveCount 2).
	waitDepth(t, b, dlq, func(d qsqs.Depth) bool { return d.Visible == int64(len(msgs)) })
	if err := main.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d, _ := b.Depth(context.Background(), tp, ""); d.Total() != 0 {
		t.Errorf("source queue depth after dead-lettering = %+v, want empty", d)
	}

	redriveAt := time.Now()
	res, err := b.Redrive(context.Background(), dlq, b.SubscriptionQueue(tp, ""), qsqs.RedriveOptions{})
	if err != nil || res.Moved != len(msgs) || !res.Done() {
		t.Fatalf("Redrive = %+v, %v; want %d moved and nothing left", res, err, len(msgs))
	}
	if d, _ := b.QueueDepth(context.Background(), dlq); d.Total() != 0 {
		t.Errorf("dead-letter queue after redrive = %+v, want empty", d)
	}
	again := subscribe(t, bb, broker.SubscriberOptions{Topic: tp})
	want := map[string]*broker.Message{}
	for _, m := range msgs {
		want[m.ID] = m
	}
	for range msgs {
		d := receive(t, again, 10*time.Second)
		got, w := d.Message(), want[d.Message().ID]
		if w == nil {
			t.Fatalf("redriven message %q is not one of those published", got.ID)
		}
		if !bytes.Equal(got.Payload, w.Payload) || got.Key != w.Key || len(got.Headers) != len(w.Headers)+1 {
			t.Errorf("redriven %s = payload %q key %q headers %v; want %q %q %v and %s", got.ID, got.Payload, got.Key, got.Headers, w.Payload, w.Key, w.Headers, dlq_.HeaderRedrives)
		}
		if got.PublishedAt.Before(redriveAt) {
			t.Errorf("redriven %s: PublishedAt %v, want the time of the redrive (after %v), as queuekit redrive does", got.ID, got.PublishedAt, redriveAt)
		}
		if got.Header(dlq_.HeaderRedrives) != "1" {
			t.Errorf("redriven %s: %s = %q, want 1", got.ID, dlq_.HeaderRedrives, got.Header(dlq_.HeaderRedrives))
		}
		for k, v := range w.Headers {
			if got.Headers[k] != v {
				t.Errorf("redriven %s: header %s = %q, want %q", got.ID, k, got.Headers[k], v)
			}
		}
		_ = d.Ack(context.Background())
	}
	if res, err := b.Redrive(context.Background(), dlq, b.SubscriptionQueue(tp, ""), qsqs.RedriveOptions{}); res.Moved != 0 || !res.Done() || err != nil {
		t.Errorf("Redrive of an empty dead-letter queue = %+v, %v", res, err)
	}
}

// A message whose send back fails stays in the dead-letter queue.
func TestRedriveKeepsWhatItCouldNotSend(t *testing.T) {
	t.Parallel()
	bb, b := open(t, "")
	tp := topic(t)
	src, err := b.EnsureQueue(context.Background(), qsqs.QueueName(tp, false), qsqs.QueueSpec{})
	if err != nil {
		t.Fatal(err)
	}
	dlqName := qsqs.QueueName(tp+"-dead", false)
	if err := bb.Declare(context.Background(), dlqName); err != nil {
		t.Fatal(err)
	}
	p := publisher(t, bb)
	small := &broker.Message{Payload: []byte("fits")}
	big := &broker.Message{Payload: bytes.Repeat([]byte("b"), 3000)}
	if err := p.Publish(context.Background(), dlqName, small, big); err != nil {
		t.Fatal(err)
	}
	// The source queue takes at most 1 KiB: big cannot go back.
	if _, err := b.Client().SetQueueAttributes(context.Background(), &awssqs.SetQueueAttributesInput{
		QueueUrl: &src.URL, Attributes: map[string]string{"MaximumMessageSize": "1024"},
	}); err != nil {
		t.Fatal(err)
	}
	res, err := b.Redrive(context.Background(), dlqName, src.URL, qsqs.RedriveOptions{})
	if res.Moved != 1 || err == nil || broker.KindOf(err) != semantics.InvalidArgument {
		t.Fatalf("Redrive = %+v, %v; want 1 moved and an invalid-argument error for the big one", res, err)
	}
	if res.Left.Visible != 1 || res.Left.InFlight != 0 {
		t.Errorf("Redrive left %+v, want the big one visible", res.Left)
	}
	d := waitDepth(t, b, dlqName, func(d qsqs.Depth) bool { return d.Visible == 1 })
	if d.InFlight != 0 {
		t.Errorf("the unsent message is still hidden: %+v", d)
	}
	sub := subscribe(t, bb, broker.SubscriberOptions{Topic: dlqName})
	if got := receive(t, sub, 10*time.Second).Message(); got.ID != big.ID || len(got.Payload) != len(big.Payload) {
		t.Errorf("left in the dead-letter queue: %s (%d bytes), want %s", got.ID, len(got.Payload), big.ID)
	}
	srcSub := subscribe(t, bb, broker.SubscriberOptions{Topic: tp})
	if got := receive(t, srcSub, 10*time.Second).Message(); got.ID != small.ID {
		t.Errorf("moved %s, want %s", got.ID, small.ID)
	}
}

func TestEnsureQueueWiresTheRedrivePolicy(t *testing.T) {
	t.Parallel()
	_, b := open(t, "")
	name := qsqs.QueueName(topic(t), true)
	info, err := b.EnsureQueue(context.Background(), name, qsqs.QueueSpec{FIFO: true, DeadLetterQueue: name[:len(name)-5] + "-dlq", MaxReceiveCount: 4})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Created || info.DeadLetterARN == "" || info.DeadLetterURL[len(info.DeadLetterURL)-5:] != ".fifo" {
		t.Fatalf("EnsureQueue = %+v, want a created queue with a FIFO dead-letter queue", info)
	}
	out, err := b.Client().GetQueueAttributes(context.Background(), &awssqs.GetQueueAttributesInput{
		QueueUrl: &info.URL, AttributeNames: []awstypes.QueueAttributeName{"RedrivePolicy", "FifoQueue"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`{"deadLetterTargetArn":%q,"maxReceiveCount":"4"}`, info.DeadLetterARN)
	if out.Attributes["RedrivePolicy"] != want || out.Attributes["FifoQueue"] != "true" {
		t.Errorf("attributes = %v, want RedrivePolicy %s on a FIFO queue", out.Attributes, want)
	}
	again, err := b.EnsureQueue(context.Background(), name, qsqs.QueueSpec{FIFO: true})
	if err != nil || again.Created || again.URL != info.URL {
		t.Errorf("second EnsureQueue = %+v, %v; want the same queue, not created", again, err)
	}
	if _, err := b.EnsureQueue(context.Background(), name, qsqs.QueueSpec{DeadLetterQueue: "x"}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("EnsureQueue with a dead-letter queue and no MaxReceiveCount = %v, want invalid argument", err)
	}
}

// On FIFO queues (queue mode) messages of one key arrive in publish order,
// and the message ID deduplicates.
func TestFIFOQueueKeepsKeyOrderAndDeduplicates(t *testing.T) {
	t.Parallel()
	b, _ := open(t, "fifo=true")
	tp := topic(t)
	sub := subscribe(t, b, broker.SubscriberOptions{Topic: tp, Ordering: semantics.PerKey})
	p := publisher(t, b)
	led := conformance.NewLedger()
	const n = 60
	var msgs []*broker.Message
	for i := range n {
		m := &broker.Message{ID: fmt.Sprintf("m%03d", i), Key: fmt.Sprint("key", i%3), Payload: []byte(fmt.Sprint(i))}
		msgs = append(msgs, m)
		led.Published(m.ID, m.Key)
	}
	for i := 0; i < n; i += 7 {
		if err := p.Publish(context.Background(), tp, msgs[i:min(i+7, n)]...); err != nil {
			t.Fatal(err)
		}
	}
	// Same ID again: SQS drops it (deduplication by message ID).
	if err := p.Publish(context.Background(), tp, &broker.Message{ID: "m000", Key: "key0", Payload: []byte("dup")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- broker.Consume(ctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			led.Delivered(m.ID)
			led.Handled(m.ID)
			if r := led.Report(); r.Handled == n {
				cancel()
			}
			return nil
		}), broker.ConsumeOptions{Concurrency: 3})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		cancel()
		<-done
		t.Fatalf("timed out: %v", led.Report())
	}
	if r := led.Report(); !r.OK() {
		t.Errorf("FIFO consumption: %v", r)
	}
	nothing(t, sub, time.Second) // the duplicate of m000 never comes
}

// cutProxy is a TCP proxy in front of the SQS endpoint that forwards HTTP
// requests one by one and cuts off the first ReceiveMessage answer that
// carries messages halfway through its body, then closes the connection:
// the client gets an error, and SQS has handed out those messages, which
// stay hidden for their visibility timeout.
type cutProxy struct {
	ln      net.Listener
	backend string
	cuts    atomic.Int32
	cut     atomic.Bool // the one cut was made
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{} // closed at cleanup: clients keep idle ones
}

func newCutProxy(t *testing.T, endpoint string) *cutProxy {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, backend: u.Host, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) endpoint() string { return "http://" + p.ln.Addr().String() }

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

// track remembers c until the cleanup, or forgets it.
func (p *cutProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *cutProxy) serve(client net.Conn) {
	p.track(client, true)
	defer func() { p.track(client, false); client.Close() }()
	backend, err := net.Dial("tcp", p.backend)
	if err != nil {
		return
	}
	p.track(backend, true)
	defer func() { p.track(backend, false); backend.Close() }()
	cr, br := bufio.NewReader(client), bufio.NewReader(backend)
	for {
		req, err := http.ReadRequest(cr)
		if err != nil {
			return
		}
		if err := req.Write(backend); err != nil {
			return
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return
		}
		resp.TransferEncoding = nil
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		if strings.HasSuffix(req.Header.Get("X-Amz-Target"), ".ReceiveMessage") && bytes.Contains(body, []byte("ReceiptHandle")) && p.cut.CompareAndSwap(false, true) {
			p.cuts.Add(1)
			resp.Body = io.NopCloser(bytes.NewReader(body[:len(body)/2]))
			_ = resp.Write(client) // writes the headers and half the body
			return                 // and closes the connection
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		if err := resp.Write(client); err != nil {
			return
		}
	}
}

// deadLetters makes a source queue and a dead-letter queue holding n
// messages (published straight to it), and returns their names.
func deadLetters(t *testing.T, b *broker.Broker, n int) (src, dlq string, msgs []*broker.Message) {
	t.Helper()
	tp := topic(t)
	src, dlq = qsqs.QueueName(tp, false), qsqs.QueueName(tp+"-dead", false)
	if err := b.Declare(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	if err := b.Declare(context.Background(), dlq); err != nil {
		t.Fatal(err)
	}
	p := publisher(t, b)
	for i := range n {
		msgs = append(msgs, &broker.Message{Key: fmt.Sprint("k", i%4), Payload: []byte(fmt.Sprint("dead ", i))})
	}
	if err := p.Publish(context.Background(), dlq, msgs...); err != nil {
		t.Fatal(err)
	}
	return src, dlq, msgs
}

// A ReceiveMessage answer cut off mid-body (the SDK's retries are off on a
// URL-opened broker) does not stop Redrive: it retries, waits for the
// messages of the lost answer to be visible again, and moves everything;
// its result says nothing is left (issue 18).
func TestRedriveRetriesACutReceive(t *testing.T) {
	t.Parallel()
	direct, _ := open(t, "")
	const n = 25
	src, dlq, msgs := deadLetters(t, direct, n)

	proxy := newCutProxy(t, testenv.SQS(t))
	viaProxy, err := broker.Open(context.Background(), "sqs://?endpoint="+url.QueryEscape(proxy.endpoint()))
	if err != nil {
		t.Fatal(err)
	}
	defer viaProxy.Close(context.Background())
	qb := adapter(t, viaProxy)
	res, err := qb.Redrive(ctxT(t, 60*time.Second), dlq, src, qsqs.RedriveOptions{VisibilityTimeout: 2 * time.Second})
	if proxy.cuts.Load() != 1 {
		t.Fatalf("the proxy cut %d receive answers, want 1 (the test proves nothing)", proxy.cuts.Load())
	}
	if err != nil || res.Moved != n || !res.Done() {
		t.Fatalf("Redrive through a cut receive = %+v, %v; want all %d moved, nothing left", res, err, n)
	}
	sub := subscribe(t, direct, broker.SubscriberOptions{Topic: src})
	want := map[string]bool{}
	for _, m := range msgs {
		want[m.ID] = true
	}
	for range n {
		d := receive(t, sub, 10*time.Second)
		if !want[d.Message().ID] {
			t.Errorf("unexpected or duplicate message %s in the source queue", d.Message().ID)
		}
		delete(want, d.Message().ID)
		_ = d.Ack(context.Background())
	}
}

// Messages in flight in the dead-letter queue when Redrive runs (left
// hidden by a run that was killed mid-way) are not moved, and the result
// says so rather than reporting a finished job (issue 18).
func TestRedriveReportsMessagesLeftInFlight(t *testing.T) {
	t.Parallel()
	b, qb := open(t, "")
	const n, hidden = 15, 10
	src, dlq, _ := deadLetters(t, b, n)
	dlqURL, err := qb.EnsureQueue(context.Background(), dlq, qsqs.QueueSpec{})
	if err != nil {
		t.Fatal(err)
	}
	// A killed run received these and never came back.
	out, err := qb.Client().ReceiveMessage(context.Background(), &awssqs.ReceiveMessageInput{
		QueueUrl: &dlqURL.URL, MaxNumberOfMessages: hidden, VisibilityTimeout: 120,
	})
	if err != nil || len(out.Messages) != hidden {
		t.Fatalf("ReceiveMessage = %d messages, %v; want %d", len(out.Messages), err, hidden)
	}
	res, err := qb.Redrive(ctxT(t, 60*time.Second), dlq, src, qsqs.RedriveOptions{})
	if err != nil || res.Moved != n-hidden {
		t.Fatalf("Redrive = %+v, %v; want %d moved", res, err, n-hidden)
	}
	if res.Done() || res.Left.InFlight != hidden || res.Left.Visible != 0 {
		t.Errorf("Redrive left %+v (done %v); want %d in flight reported", res.Left, res.Done(), hidden)
	}
}
