package broker_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func TestOpenUnknownSchemeListsRegisteredOnes(t *testing.T) {
	broker.Register("test-open", broker.DriverFunc(func(ctx context.Context, u *url.URL) (broker.Broker, error) {
		return nil, errors.New("dial " + u.String() + ": refused")
	}))
	_, err := broker.Open(context.Background(), "nosuch://user:s3cret@host/x")
	if err == nil || !strings.Contains(err.Error(), `"nosuch"`) || !strings.Contains(err.Error(), "test-open") {
		t.Fatalf("err = %v; want it to name the scheme and list registered ones", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("password leaked: %v", err)
	}
	if broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("kind = %v, want invalid argument", broker.KindOf(err))
	}
	// A driver that echoes the URL in its error must not leak the password.
	_, err = broker.Open(context.Background(), "test-open://user:s3cret@host/x")
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("driver error = %v; want the cause without the password", err)
	}
}

func TestOpenMalformedURLIsRedacted(t *testing.T) {
	_, err := broker.Open(context.Background(), "amqp://guest:hunter2@host:notaport/")
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "malformed URL") {
		t.Fatalf("err = %v; want a malformed-URL error without the password", err)
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	d := broker.DriverFunc(func(context.Context, *url.URL) (broker.Broker, error) { return nil, nil })
	broker.Register("test-twice", d)
	defer func() {
		if recover() == nil {
			t.Error("second Register did not panic")
		}
	}()
	broker.Register("test-twice", d)
}

func TestParams(t *testing.T) {
	u, _ := url.Parse("x://h/?prefetch=10&wait=2s&fifo=true&bogus=1&other=2&n=abc")
	p := broker.NewParams("x", u, "prefetch", "wait", "fifo", "n", "absent")
	if got := p.Int("prefetch", 1); got != 10 {
		t.Errorf("prefetch = %d", got)
	}
	if got := p.Duration("wait", 0); got != 2*time.Second {
		t.Errorf("wait = %v", got)
	}
	if got := p.Bool("fifo", false); !got {
		t.Error("fifo = false")
	}
	if got := p.String("absent", "def"); got != "def" {
		t.Errorf("absent = %q", got)
	}
	if got := p.Int("n", 7); got != 7 {
		t.Errorf("bad int should give the default, got %d", got)
	}
	err := p.Err()
	if err == nil {
		t.Fatal("Err() = nil with unknown parameters")
	}
	for _, want := range []string{"x: open", "unknown URL parameter(s) bogus, other", "valid: absent, fifo, n, prefetch, wait", `n="abc" is not an integer`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Err() = %q, missing %q", err, want)
		}
	}
	if broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("kind = %v", broker.KindOf(err))
	}
	ok, _ := url.Parse("x://h/?prefetch=3")
	if err := broker.NewParams("x", ok, "prefetch").Err(); err != nil {
		t.Errorf("known params only: %v", err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:pw@h:5672/":     "amqp://guest:xxxxx@h:5672/",
		"amqp://guest:pw@h:bad/":      "amqp://guest:xxxxx@h:bad/",
		"kafka://h:9092/?topic=a":     "kafka://h:9092/?topic=a",
		"mem://":                      "mem://",
		"redis://:onlypw@h:6379/0":    "redis://:xxxxx@h:6379/0",
		"amqp://us%zzer:pw@h/":        "amqp://us%zzer:xxxxx@h/",
		"postgres://u:p@w@h/db?x=1":   "postgres://u:xxxxx@h/db?x=1",
		"postgres://u:p%40w@h/db?x=1": "postgres://u:xxxxx@h/db?x=1",
	} {
		if got := broker.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestErrorKinds(t *testing.T) {
	base := errors.New("boom")
	if broker.KindOf(base) != semantics.Unknown {
		t.Error("plain error has a kind")
	}
	p := fmt.Errorf("handler: %w", broker.Permanent(base))
	if !broker.IsPermanent(p) || !errors.Is(p, base) {
		t.Errorf("Permanent lost through wrapping: %v", p)
	}
	w := broker.WrapError(semantics.Transient, "kafka: publish", broker.Permanent(base))
	if broker.KindOf(w) != semantics.Permanent {
		t.Errorf("WrapError overrode an existing kind: %v", broker.KindOf(w))
	}
	if broker.WrapError(semantics.Transient, "op", nil) != nil {
		t.Error("WrapError(nil) != nil")
	}
	r := fmt.Errorf("outer: %w", broker.RetryAfter(base, 3*time.Second))
	if d, ok := broker.RetryDelay(r); !ok || d != 3*time.Second {
		t.Errorf("RetryDelay = %v, %v", d, ok)
	}
	if _, ok := broker.RetryDelay(base); ok {
		t.Error("RetryDelay found a delay on a plain error")
	}
	pe := &broker.PublishError{Failed: []broker.PublishFailure{
		{Index: 2, ID: "a", Err: broker.Errorf(semantics.Transient, "sqs: publish", "throttled")},
		{Index: 5, ID: "b", Err: errors.New("x")},
	}}
	if broker.KindOf(pe) != semantics.Transient || !strings.Contains(pe.Error(), "#2 (id a)") {
		t.Errorf("PublishError: kind %v, text %q", broker.KindOf(pe), pe.Error())
	}
	big := &broker.TooLargeError{ID: "m", Size: 10, Max: 5}
	if !errors.Is(broker.WrapError(semantics.InvalidArgument, "op", big), broker.ErrTooLarge) {
		t.Error("TooLargeError is not ErrTooLarge")
	}
}

func TestSettlementIsIdempotent(t *testing.T) {
	var s broker.Settlement
	if first, err := s.Ack(); !first || err != nil {
		t.Fatalf("first Ack = %v, %v", first, err)
	}
	if first, err := s.Ack(); first || err != nil {
		t.Errorf("second Ack = %v, %v; want false, nil", first, err)
	}
	if first, err := s.Nack(); first || !errors.Is(err, broker.ErrAlreadySettled) {
		t.Errorf("Nack after Ack = %v, %v; want ErrAlreadySettled", first, err)
	}
	if !s.Settled() {
		t.Error("Settled() = false")
	}
}

func TestChainOrder(t *testing.T) {
	var trace []string
	mw := func(name string) broker.Middleware {
		return func(next broker.Handler) broker.Handler {
			return broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				trace = append(trace, name)
				return next.Handle(ctx, m)
			})
		}
	}
	h := broker.Chain(mw("a"), nil, mw("b"))(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		trace = append(trace, "h")
		return nil
	}))
	_ = h.Handle(context.Background(), &broker.Message{})
	if got := strings.Join(trace, ","); got != "a,b,h" {
		t.Errorf("order = %s, want a,b,h", got)
	}
}

func TestPrepare(t *testing.T) {
	ms := []*broker.Message{{Payload: []byte("x")}, {ID: "given", Payload: []byte("y")}}
	if err := broker.Prepare("op", ms, 0); err != nil {
		t.Fatal(err)
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	if !uuid.MatchString(ms[0].ID) || ms[1].ID != "given" {
		t.Errorf("ids = %q, %q", ms[0].ID, ms[1].ID)
	}
	if ms[0].PublishedAt.IsZero() {
		t.Error("PublishedAt not stamped")
	}
	err := broker.Prepare("op", []*broker.Message{{Payload: make([]byte, 10)}}, 5)
	var tl *broker.TooLargeError
	if !errors.As(err, &tl) || tl.Max != 5 || broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("oversize: %v", err)
	}
	if err := broker.Prepare("op", []*broker.Message{nil}, 0); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("nil message: %v", err)
	}
}

func TestSubscriberOptions(t *testing.T) {
	o := broker.SubscriberOptions{Topic: "orders"}.WithDefaults()
	if o.Group != "default" || o.DeadLetterTopic != "orders.dlq" {
		t.Errorf("defaults = %+v", o)
	}
	if err := (broker.SubscriberOptions{}).Validate("op"); err == nil {
		t.Error("missing topic accepted")
	}
	if err := (broker.SubscriberOptions{Topic: "t", MaxAttempts: -1}).Validate("op"); err == nil {
		t.Error("negative MaxAttempts accepted")
	}
}

func TestNewIDIsUniqueAcrossGoroutines(t *testing.T) {
	const perG, gs = 5000, 8
	ids := make(chan string, perG*gs)
	done := make(chan struct{})
	for range gs {
		go func() {
			for range perG {
				ids <- broker.NewID()
			}
			done <- struct{}{}
		}()
	}
	for range gs {
		<-done
	}
	close(ids)
	seen := make(map[string]bool, perG*gs)
	for id := range ids {
		if seen[id] {
			t.Fatalf("NewID returned %s twice", id)
		}
		seen[id] = true
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = broker.NewID()
	}
}

type stubDelivery struct{ m broker.Message }

func (d *stubDelivery) Message() *broker.Message                  { return &d.m }
func (d *stubDelivery) Ack(context.Context) error                 { return nil }
func (d *stubDelivery) Nack(context.Context, time.Duration) error { return nil }

func TestFillBatch(t *testing.T) {
	ch := make(chan *stubDelivery, 10)
	for i := range 5 {
		ch <- &stubDelivery{broker.Message{ID: fmt.Sprint(i)}}
	}
	receive := func(ctx context.Context) (broker.Delivery, error) {
		select {
		case d := <-ch:
			return d, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	buf := make([]broker.Delivery, 3)
	n, err := broker.FillBatch(context.Background(), buf, receive, broker.Ready(ch))
	if err != nil || n != 3 || buf[2].Message().ID != "2" {
		t.Fatalf("first batch: n=%d err=%v", n, err)
	}
	n, err = broker.FillBatch(context.Background(), buf, receive, broker.Ready(ch))
	if err != nil || n != 2 || buf[1].Message().ID != "4" {
		t.Fatalf("second batch (2 left, must not block): n=%d err=%v", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := broker.FillBatch(ctx, buf, receive, broker.Ready(ch)); n != 0 || err == nil {
		t.Fatalf("empty with a cancelled ctx: n=%d err=%v", n, err)
	}
}
