package dedupetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/memory" // mem://, for Unavailable
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Unavailable checks what a consumer does while the store's server is down:
// down is a store whose server refuses connections (call it after taking the
// server away). One message is consumed through broker.Consume on mem://
// with the dedupe step (broker.Idempotent over down) for 3 seconds: the
// handler must never run, each failed store call must be a transient error
// that carries a redelivery delay (broker.RetryAfter), and those delays must
// grow, so the message comes back a handful of times, not thousands (which
// is what nacking at once does: a 4-second PostgreSQL outage made 20,000
// nacks).
func Unavailable(t *testing.T, down broker.IdempotencyStore) {
	UnavailableStep(t, broker.Idempotent(down, broker.IdempotencyOptions{}))
}

// UnavailableStep is Unavailable for a dedupe step that keeps its records
// by itself, such as a transactional inbox: step wraps a handler that must
// not run, and its server is down.
func UnavailableStep(t *testing.T, step broker.Middleware) {
	const window = 3 * time.Second
	ctx := context.Background()
	b, err := broker.Open(ctx, "mem://dedupetest-"+unique())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close(ctx) }()
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "down"})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close(ctx) }()
	if err := pub.Publish(ctx, "down", &broker.Message{ID: "down-" + unique()}); err != nil {
		t.Fatal(err)
	}

	var runs atomic.Int32
	var mu sync.Mutex
	var errs []error
	h := step(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		runs.Add(1)
		return nil
	}))
	wctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	err = broker.Consume(wctx, sub, h, broker.ConsumeOptions{
		ShutdownTimeout: 10 * time.Second,
		OnError: func(_ *broker.Message, err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := runs.Load(); n != 0 {
		t.Fatalf("the handler ran %d times with the store down", n)
	}
	if len(errs) < 2 {
		t.Fatalf("%d store failures in %v, want the message nacked and redelivered at least once: %v", len(errs), window, errs)
	}
	const most = 12
	if len(errs) > most {
		t.Fatalf("the message was nacked %d times in %v with the store down, want at most %d (redelivery delays that grow); first error: %v", len(errs), window, most, errs[0])
	}
	var last time.Duration
	for i, err := range errs {
		if k := broker.KindOf(err); k != semantics.Transient {
			t.Errorf("store failure %d: kind %v, want Transient: %v", i+1, k, err)
		}
		d, ok := broker.RetryDelay(err)
		if !ok || d <= 0 || d < last {
			t.Fatalf("store failure %d: redelivery delay %v (set %v) after %v, want a delay that does not shrink: %v", i+1, d, ok, last, err)
		}
		last = d
	}
	t.Logf("%d nacks in %v with the store down; delays up to %v", len(errs), window, last)
}

// Unresponsive checks that a store gives up when ctx ends: hung is a store
// whose server accepts connections and never answers. Claim, Complete and
// Release with a 500ms ctx must each return within 2s with a transient error.
func Unresponsive(t *testing.T, hung broker.IdempotencyStore) {
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Claim", func(ctx context.Context) error {
			_, _, err := hung.Claim(ctx, "hung-"+unique(), time.Minute)
			return err
		}},
		// A store cannot tell a stale token from its own without asking.
		{"Complete", func(ctx context.Context) error { return hung.Complete(ctx, "hung-"+unique(), "stale-token") }},
		{"Release", func(ctx context.Context) error { return hung.Release(ctx, "hung-"+unique(), "stale-token") }},
	}
	for _, c := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		start := time.Now()
		err := c.call(ctx)
		took := time.Since(start)
		cancel()
		t.Logf("%s returned after %v: %v", c.name, took.Round(time.Millisecond), err)
		if took > 2*time.Second {
			t.Errorf("%s with a 500ms ctx against a server that never answers returned after %v: %v", c.name, took.Round(time.Millisecond), err)
		}
		if err == nil || broker.KindOf(err) != semantics.Transient {
			t.Errorf("%s against a server that never answers: %v (kind %v), want a transient error", c.name, err, broker.KindOf(err))
		}
	}
}

func unique() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
