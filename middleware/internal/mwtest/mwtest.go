// Package mwtest runs the middleware tests over real brokers: the embedded
// mem:// broker and RabbitMQ. It opens them by URL, so a test binary that
// uses it must link the adapters (blank imports in its _test files); it
// compiles no broker SDK itself.
package mwtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// Env is one broker under test, with a publisher.
type Env struct {
	Name string
	B    *broker.Broker
	Pub  *broker.Publisher
}

// ForEachBroker runs f as a subtest over mem:// and over RabbitMQ (skipped
// when the server is absent, failed under CI=true).
func ForEachBroker(t *testing.T, f func(t *testing.T, e *Env)) {
	t.Run("memory", func(t *testing.T) {
		f(t, open(t, "memory", "mem://mwtest-"+Unique()))
	})
	t.Run("rabbitmq", func(t *testing.T) {
		url := testenv.RabbitMQ(t)
		if !slices.Contains(broker.Schemes(), "amqp") {
			t.Fatal("the test binary does not link adapters/rabbitmq: blank-import it")
		}
		f(t, open(t, "rabbitmq", url))
	})
}

func open(t *testing.T, name, url string) *Env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	b, err := broker.Open(ctx, url)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		_ = b.Close(ctx)
		t.Fatalf("%s: new publisher: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = pub.Close(ctx)
		_ = b.Close(ctx)
	})
	return &Env{Name: name, B: b, Pub: pub}
}

// Unique returns a short random string for topic and key names.
func Unique() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Topic returns a fresh topic name.
func (e *Env) Topic(what string) string { return "qk-mw-" + what + "-" + Unique() }

// Subscribe makes a subscriber closed at the end of the test. Subscribe
// before publishing: a RabbitMQ group receives what is published after its
// queue exists.
func (e *Env) Subscribe(t *testing.T, opts broker.SubscriberOptions) *broker.Subscriber {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sub, err := e.B.NewSubscriber(ctx, opts)
	if err != nil {
		t.Fatalf("%s: subscribe %+v: %v", e.Name, opts, err)
	}
	o := sub.Options()
	e.Forget(t, o.Topic, o.Group) // cleanups run last first: after the Close below
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = sub.Close(ctx)
	})
	return sub
}

// Forget deletes the subscription of group to topic at the end of the test,
// on brokers where it outlives its subscribers (RabbitMQ queues). Subscribe
// calls it; call it for subscriptions an adapter declares by itself (a
// native dead-letter queue).
func (e *Env) Forget(t *testing.T, topic, group string) {
	var d interface {
		DeleteSubscription(ctx context.Context, topic, group string) error
	}
	if !e.B.As(&d) {
		return
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.DeleteSubscription(ctx, topic, group); err != nil {
			t.Logf("%s: deleting subscription %s/%s: %v", e.Name, topic, group, err)
		}
	})
}

// Publish publishes msgs to topic or fails the test.
func (e *Env) Publish(t *testing.T, topic string, msgs ...*broker.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Pub.Publish(ctx, topic, msgs...); err != nil {
		t.Fatalf("%s: publish to %s: %v", e.Name, topic, err)
	}
}

// Consume runs broker.Consume in the background until the returned stop is
// called (or the test ends) and returns Consume's error from stop.
func Consume(t *testing.T, sub *broker.Subscriber, h broker.Handler, opts broker.ConsumeOptions) (stop func() error) {
	t.Helper()
	if opts.OnError == nil {
		opts.OnError = func(*broker.Message, error) {} // failures are the point of these tests
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = 5 * time.Second // a stuck handler fails the test sooner
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- broker.Consume(ctx, sub, h, opts) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("Consume did not return within 30s of cancellation")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("consume: %v", err)
		}
	})
	return stop
}

// Eventually polls cond every 10ms until it holds, failing the test with
// the message after within. Its arguments are evaluated when it is called:
// wrap one in Late to show the state the test gave up in.
func Eventually(t *testing.T, within time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Receive returns the next delivery of sub within d or fails the test.
func Receive(t *testing.T, sub *broker.Subscriber, d time.Duration) *broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	del, err := sub.Receive(ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return del
}

// Late is formatted as what f returns when it is formatted, as by a
// failing Eventually, not when the call that takes it is made.
func Late(f func() any) fmt.Formatter { return late(f) }

type late func() any

func (l late) Format(s fmt.State, verb rune) { fmt.Fprintf(s, fmt.FormatString(s, verb), l()) }
