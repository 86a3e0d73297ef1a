package rabbitmq

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

// distinctDelays returns n delays that fall in n different delay buckets
// (see delayMillis), so that each one's Nack declares its own delay queue.
func distinctDelays(n int) []time.Duration {
	var ds []time.Duration
	for ms := int64(1); ms < 10 && len(ds) < n; ms++ {
		ds = append(ds, time.Duration(ms)*time.Millisecond)
	}
	for decade := int64(1); len(ds) < n; decade *= 10 {
		for _, step := range delaySteps[:len(delaySteps)-1] {
			if len(ds) == n {
				break
			}
			ds = append(ds, time.Duration(step*decade)*time.Millisecond)
		}
	}
	return ds
}

// Delayed nacks of one subscriber, run concurrently (as by a handler with
// Concurrency > 1 under the retry middleware), share the subscriber's
// confirm-mode retry channel. amqp091 sends a publish as several frames
// (method, header, body...) under the channel's lock but the method of a
// synchronous call such as queue.declare without it: when one delayed
// nack declared its delay queue on that channel while another published
// its copy, the declare could land between the copy's header and body,
// and RabbitMQ closed the whole publishing connection (505
// UNEXPECTED_FRAME), under every publisher on it.
func TestConcurrentDelayedNacksKeepTheConnection(t *testing.T) {
	b := openBroker(t, "queue_type=classic", Options{})
	rb := rabbit(t, b)
	pub := newPub(t, b)
	var conn *amqp.Connection
	if !rb.As(&conn) {
		t.Fatal("no publishing connection")
	}
	lost := conn.NotifyClose(make(chan *amqp.Error, 1))

	// Each delay in its own bucket, so that every Nack declares a delay
	// queue; bodies of several frames (frame_max is 128 KiB) keep each
	// copy on the wire for a while. A round interleaves them only now and
	// then: a few rounds, each with a subscriber of its own, make it near
	// certain.
	delays := distinctDelays(64)
	payload := bytes.Repeat([]byte("x"), 300<<10)
	for round := range 6 {
		topic := uniq("retrychan")
		sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
		msgs := make([]*broker.Message, len(delays))
		for i := range msgs {
			msgs[i] = &broker.Message{ID: fmt.Sprintf("m-%d", i), Payload: payload}
		}
		if err := pub.Publish(ctxT(t, 30*time.Second), topic, msgs...); err != nil {
			t.Fatalf("round %d: Publish: %v", round, err)
		}
		ds := make([]*broker.Delivery, len(msgs))
		for i := range ds {
			ds[i] = receive(t, sub, 10*time.Second)
		}

		// Four workers, as a handler with Concurrency 4, each nacking its
		// deliveries in turn: one's declaration goes out while another
		// publishes.
		todo := make(chan int, len(ds))
		for i := range ds {
			todo <- i
		}
		close(todo)
		errs := make([]error, len(ds))
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range todo {
					errs[i] = ds[i].Nack(ctxT(t, 30*time.Second), delays[i])
				}
			}()
		}
		wg.Wait()

		select {
		case e := <-lost:
			t.Errorf("round %d: the publishing connection closed during the delayed nacks: %v", round, e)
		default:
		}
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d: Nack(%v) of %s: %v", round, delays[i], ds[i].Message().ID, err)
			}
		}
		if t.Failed() {
			return
		}
	}
	// The connection still publishes.
	topic := uniq("retrychan")
	newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	if err := pub.Publish(ctxT(t, 10*time.Second), topic, &broker.Message{ID: "after"}); err != nil {
		t.Fatalf("Publish after the nacks: %v", err)
	}
}

// Closing a publisher whose Close context has ended does not wait for the
// Publish calls under way: it closes the channel while the sender may be
// writing a publish, and must not split the publish's frames with its
// channel.close (505 UNEXPECTED_FRAME, which would close the connection
// under every other publisher).
func TestPublisherCloseDuringPublishKeepsTheConnection(t *testing.T) {
	b := openBroker(t, "queue_type=classic", Options{})
	rb := rabbit(t, b)
	topic := uniq("closepub")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	var conn *amqp.Connection
	if !rb.As(&conn) {
		t.Fatal("no publishing connection")
	}
	lost := conn.NotifyClose(make(chan *amqp.Error, 1))
	payload := bytes.Repeat([]byte("x"), 300<<10)
	for round := range 6 {
		p, err := b.NewPublisher(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		msgs := make([]*broker.Message, 128)
		for i := range msgs {
			msgs[i] = &broker.Message{ID: fmt.Sprintf("r%d-%d", round, i), Payload: payload}
		}
		published := make(chan error, 1)
		go func() { published <- p.Publish(ctxT(t, 30*time.Second), topic, msgs...) }()
		// The sender is under way once a message arrives.
		_ = receive(t, sub, 10*time.Second).Ack(ctxT(t, 5*time.Second))
		ended, cancel := context.WithCancel(context.Background())
		cancel()
		_ = p.Close(ended) // fails: the Publish call is unconfirmed
		<-published        // may fail too: the channel closed under it
	}
	// A publish confirmed on the same connection shows that the broker
	// took every frame before it.
	pub := newPub(t, b)
	if err := pub.Publish(ctxT(t, 10*time.Second), topic, &broker.Message{ID: "after"}); err != nil {
		t.Fatalf("Publish after the closes: %v", err)
	}
	if conn.IsClosed() {
		t.Fatalf("the publishing connection closed: %v", <-lost)
	}
}
