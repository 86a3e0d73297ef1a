package rabbitmq

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func TestRoundTripCarriesIDKeyHeadersAndPayload(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("rt")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	pub := newPub(t, b)
	payload := []byte{0, 1, 2, 0xff, 'x', 0}
	msg := &broker.Message{ID: "id-1", Key: "k-1", Payload: payload, Headers: map[string]string{"a": "1", "empty": ""}}
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, msg); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	d := receive(t, sub, 5*time.Second)
	m := d.Message()
	if m.ID != "id-1" || m.Key != "k-1" || !bytes.Equal(m.Payload, payload) || m.Topic != topic || m.Attempt != 1 {
		t.Errorf("got id=%q key=%q payload=%v topic=%q attempt=%d", m.ID, m.Key, m.Payload, m.Topic, m.Attempt)
	}
	if len(m.Headers) != 2 || m.Headers["a"] != "1" || m.Headers["empty"] != "" {
		t.Errorf("headers = %v, want exactly a=1 and empty=", m.Headers)
	}
	if !m.PublishedAt.Equal(msg.PublishedAt) {
		t.Errorf("PublishedAt = %v, want %v", m.PublishedAt, msg.PublishedAt)
	}
	if err := d.Ack(ctxT(t, time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctxT(t, time.Second)); err != nil {
		t.Errorf("second Ack = %v, want nil", err)
	}
	if err := d.Nack(ctxT(t, time.Second), 0); !errors.Is(err, broker.ErrAlreadySettled) {
		t.Errorf("Nack after Ack = %v, want ErrAlreadySettled", err)
	}
}

func TestUnroutablePublishIsNotFound(t *testing.T) {
	b := openBroker(t, "", Options{})
	pub := newPub(t, b)
	topic := uniq("nobody")
	msgs := []*broker.Message{{Payload: []byte("a")}, {Payload: []byte("b")}}
	err := pub.Publish(ctxT(t, 5*time.Second), topic, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 2 || broker.KindOf(err) != semantics.NotFound {
		t.Fatalf("Publish to a topic nobody subscribes = %v, want a PublishError of 2 NotFound failures", err)
	}
	if pe.Failed[0].Index != 0 || pe.Failed[1].ID != msgs[1].ID {
		t.Errorf("failures = %+v", pe.Failed)
	}
	// The channel survives: a routable publish right after succeeds.
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic})
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{Payload: []byte("c")}); err != nil {
		t.Fatalf("Publish after subscribing: %v", err)
	}
	if m := receive(t, sub, 5*time.Second).Message(); string(m.Payload) != "c" {
		t.Errorf("received %q, want c (the unroutable ones are gone)", m.Payload)
	}

	lax := openBroker(t, "mandatory=false", Options{})
	if err := newPub(t, lax).Publish(ctxT(t, 5*time.Second), uniq("nobody"), &broker.Message{}); err != nil {
		t.Errorf("mandatory=false Publish = %v, want nil", err)
	}
}
