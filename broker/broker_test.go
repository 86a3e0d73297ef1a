package broker_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Test schemes are registered once per process (Register panics on a
// second registration, and -count=2 runs every test twice).
var (
	registerOnce sync.Once
	dialled      atomic.Int32
)

func registerTestSchemes() {
	registerOnce.Do(func() {
		driver.Register("test-open", driver.OpenerFunc(func(ctx context.Context, u *url.URL) (driver.Broker, error) {
			return nil, errors.New("dial " + u.String() + ": refused")
		}))
		driver.Register("test-dial", driver.OpenerFunc(func(ctx context.Context, u *url.URL) (driver.Broker, error) {
			dialled.Add(1)
			return nil, errors.New("refused")
		}))
	})
}

func TestOpenUnknownSchemeListsRegisteredOnes(t *testing.T) {
	registerTestSchemes()
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

// A URL that is not scheme://... is refused before the adapter is asked to
// dial, and no form of it shows the password.
func TestOpenMalformedURLsNeverDialNorLeak(t *testing.T) {
	registerTestSchemes()
	before := dialled.Load()
	for _, raw := range []string{
		"test-dial://u:S3cr3t/PW@127.0.0.1:1/",
		"test-dial:/u:S3cr3t@127.0.0.1:5999/",
		"test-dial//u:S3cr3t@127.0.0.1:5999/",
		"test-dial:u:S3cr3t@127.0.0.1:5999/",
		"test-dial://u:S3cr3t@h:99x/",
	} {
		_, err := broker.Open(context.Background(), raw)
		if err == nil || broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Open(%q) = %v; want an invalid-argument error", raw, err)
		}
		if err != nil && strings.Contains(err.Error(), "S3cr3t") {
			t.Errorf("Open(%q) leaked the password: %v", raw, err)
		}
	}
	if n := dialled.Load() - before; n != 0 {
		t.Errorf("the adapter was asked to open %d malformed URLs", n)
	}
}

func newMem(t *testing.T) *broker.Broker {
	t.Helper()
	b, err := broker.Open(t.Context(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	return b
}

// Nil pointers of every user type answer with errors, never a panic: the
// typed-nil interface of the old API is gone with the interfaces.
func TestNilValuesDoNotPanic(t *testing.T) {
	ctx := context.Background()
	var b *broker.Broker
	if _, err := b.NewPublisher(ctx); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("nil Broker.NewPublisher: %v", err)
	}
	if _, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "t"}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("nil Broker.NewSubscriber: %v", err)
	}
	if err := b.Close(ctx); err != nil {
		t.Errorf("nil Broker.Close: %v", err)
	}
	var p *broker.Publisher
	if err := p.Publish(ctx, "t", &broker.Message{}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("nil Publisher.Publish: %v", err)
	}
	var s *broker.Subscriber
	if _, err := s.Receive(ctx); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("nil Subscriber.Receive: %v", err)
	}
	var d *broker.Delivery
	if err := d.Ack(ctx); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("nil Delivery.Ack: %v", err)
	}
	// A failed NewSubscriber returns a nil *Subscriber that is safe to Close.
	sub, err := newMem(t).NewSubscriber(ctx, broker.SubscriberOptions{})
	if err == nil || sub != nil {
		t.Fatalf("NewSubscriber without a topic = %v, %v", sub, err)
	}
	if err := sub.Close(ctx); err != nil {
		t.Errorf("Close of the nil subscriber: %v", err)
	}
}

func TestReservedHeadersAreRefused(t *testing.T) {
	b := newMem(t)
	if err := b.Declare(t.Context(), "t", "g"); err != nil {
		t.Fatal(err)
	}
	pub, err := b.NewPublisher(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{broker.HeaderID, broker.HeaderAttempt, broker.HeaderPublishedAt} {
		err := pub.Publish(t.Context(), "t", &broker.Message{Headers: map[string]string{h: "x"}})
		if broker.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), h) {
			t.Errorf("header %s: err = %v; want invalid argument naming it", h, err)
		}
	}
	// Headers the dead-letter path writes stay allowed.
	if err := pub.Publish(t.Context(), "t", &broker.Message{Headers: map[string]string{broker.HeaderDeadReason: "x"}}); err != nil {
		t.Errorf("dead-letter header refused: %v", err)
	}
}

// Every operation whose ctx ends returns an error of kind Canceled that
// matches the context's own error, whatever the adapter returned.
func TestContextEndErrorKind(t *testing.T) {
	b := newMem(t)
	sub, err := b.NewSubscriber(t.Context(), broker.SubscriberOptions{Topic: "t"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err = sub.Receive(ctx)
	if broker.KindOf(err) != semantics.Canceled || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Receive past its deadline: %v (kind %v)", err, broker.KindOf(err))
	}
	cctx, ccancel := context.WithCancel(t.Context())
	ccancel()
	pub, err := b.NewPublisher(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	err = pub.Publish(cctx, "t", &broker.Message{})
	if broker.KindOf(err) != semantics.Canceled || !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a cancelled ctx: %v (kind %v)", err, broker.KindOf(err))
	}
}

func TestPublishWithoutGroupIsRefused(t *testing.T) {
	b := newMem(t)
	pub, err := b.NewPublisher(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	err = pub.Publish(t.Context(), "nobody", &broker.Message{})
	if !errors.Is(err, broker.ErrNoGroup) || broker.KindOf(err) != semantics.NotFound {
		t.Fatalf("publish with no group: %v; want ErrNoGroup", err)
	}
	// A topic with a group, found just before, does not answer for it.
	if err := b.Declare(t.Context(), "somebody", "g"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := pub.Publish(t.Context(), "somebody", &broker.Message{}); err != nil {
			t.Fatalf("publish to a topic with a group: %v", err)
		}
		if err := pub.Publish(t.Context(), "nobody", &broker.Message{}); !errors.Is(err, broker.ErrNoGroup) {
			t.Fatalf("publish with no group, after a topic with one: %v; want ErrNoGroup", err)
		}
	}
	if err := b.Declare(t.Context(), "nobody", "g"); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(t.Context(), "nobody", &broker.Message{ID: "m"}); err != nil {
		t.Fatalf("publish after Declare: %v", err)
	}
	sub, err := b.NewSubscriber(t.Context(), broker.SubscriberOptions{Topic: "nobody", Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := sub.Receive(t.Context())
	if err != nil || d.Message().ID != "m" {
		t.Fatalf("the declared group did not get the message: %v", err)
	}
}

func TestConsumeRefusesNilHandlerFunc(t *testing.T) {
	b := newMem(t)
	sub, err := b.NewSubscriber(t.Context(), broker.SubscriberOptions{Topic: "t"})
	if err != nil {
		t.Fatal(err)
	}
	var f broker.HandlerFunc
	if err := broker.Consume(t.Context(), sub, f, broker.ConsumeOptions{}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("Consume with a nil HandlerFunc: %v", err)
	}
}

// recorder logs the Close calls a Broker makes on its driver's values.
type recorder struct {
	driver.Broker
	mu  sync.Mutex
	log []string
}

func (r *recorder) note(s string) { r.mu.Lock(); r.log = append(r.log, s); r.mu.Unlock() }

func (r *recorder) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	p, err := r.Broker.NewPublisher(ctx)
	return closeNoted{p, r, "publisher"}, err
}

func (r *recorder) NewSubscriber(ctx context.Context, o driver.SubscriberOptions) (driver.Subscriber, error) {
	s, err := r.Broker.NewSubscriber(ctx, o)
	return closeNoted{s, r, "subscriber"}, err
}

func (r *recorder) Close(ctx context.Context) error { r.note("broker"); return r.Broker.Close(ctx) }

type closeNoted struct {
	v interface {
		Close(context.Context) error
	}
	r    *recorder
	what string
}

func (c closeNoted) Close(ctx context.Context) error { c.r.note(c.what); return c.v.Close(ctx) }
func (c closeNoted) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	return c.v.(driver.Publisher).Publish(ctx, topic, msgs...)
}
func (c closeNoted) Receive(ctx context.Context) (driver.Delivery, error) {
	return c.v.(driver.Subscriber).Receive(ctx)
}

// Broker.Close closes subscribers first, then publishers (they flush), then
// the connection; later calls get ErrClosed.
func TestCloseOrder(t *testing.T) {
	ctx := context.Background()
	r := &recorder{Broker: memory.New(memory.Options{})}
	b := broker.New(r)
	pub, _ := b.NewPublisher(ctx)
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "t"})
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.log, ","); got != "subscriber,publisher,broker" {
		t.Errorf("close order = %s", got)
	}
	if err := pub.Publish(ctx, "t", &broker.Message{}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Broker.Close: %v", err)
	}
	if _, err := sub.Receive(ctx); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Receive after Broker.Close: %v", err)
	}
	if err := b.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Settling is idempotent, and As reaches the adapter's own type.
func TestDeliverySettlingAndAs(t *testing.T) {
	b := newMem(t)
	sub, _ := b.NewSubscriber(t.Context(), broker.SubscriberOptions{Topic: "t"})
	pub, _ := b.NewPublisher(t.Context())
	if err := pub.Publish(t.Context(), "t", &broker.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	d, err := sub.Receive(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(t.Context()); err != nil {
		t.Errorf("second Ack: %v", err)
	}
	if err := d.Nack(t.Context(), 0); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Errorf("Nack after Ack: %v", err)
	}
	var mb *memory.Broker
	if !b.As(&mb) || mb == nil {
		t.Error("As(*memory.Broker) = false")
	}
	var wrong *url.URL
	if b.As(&wrong) {
		t.Error("As(*url.URL) = true")
	}
}

// Names are non-empty, valid UTF-8 without control characters, on every
// broker.
func TestNamesAreChecked(t *testing.T) {
	b := newMem(t)
	pub, err := b.NewPublisher(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a\x01", "a\x7f", "\xffa", "tö\x00"} {
		if err := pub.Publish(t.Context(), bad, &broker.Message{}); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("topic %q: %v; want InvalidArgument", bad, err)
		}
	}
	for _, good := range []string{"orders.v1", "tópico-ü"} {
		if err := b.Declare(t.Context(), good, "g"); err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(t.Context(), good, &broker.Message{}); err != nil {
			t.Errorf("topic %q: %v", good, err)
		}
	}
}
