package memory_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
)

// Publish copies the payload, whatever its size (in the entry's own
// allocation, in a shared chunk, or alone): the publisher may reuse its
// buffer at once, and a handler appending to a payload never writes into
// another message's.
func TestPublishCopiesPayloadsOfEverySize(t *testing.T) {
	b := newBroker(t, memory.Options{})
	sub := newSub(t, b, broker.SubscriberOptions{Topic: "t"})
	pub := newPub(t, b)
	sizes := []int{1, 31, 32, 33, 64, 65, 128, 129, 200, 256, 257, 512, 513, 4000}
	buf := make([]byte, 4000)
	for _, size := range sizes {
		for i := range buf[:size] {
			buf[i] = byte(size)
		}
		publish(t, pub, "t", &broker.Message{ID: fmt.Sprint(size), Payload: buf[:size]})
		clear(buf) // reused by the publisher at once
	}
	// Two at a time to one group: these share an allocation.
	publish(t, pub, "t", &broker.Message{ID: "pair-a", Payload: []byte("aa")}, &broker.Message{ID: "pair-b", Payload: []byte("bb")})
	var got []*broker.Message
	for range len(sizes) + 2 {
		d := recv(t, sub)
		got = append(got, d.Message())
		mustAck(t, d)
	}
	for i, m := range got[:len(sizes)] {
		size := sizes[i]
		shared := size <= 512 // an allocation of its own may have room to spare
		if len(m.Payload) != size || shared && cap(m.Payload) != size || !bytes.Equal(m.Payload, bytes.Repeat([]byte{byte(size)}, size)) {
			t.Fatalf("message %s: payload of len %d cap %d, want %d bytes of %d", m.ID, len(m.Payload), cap(m.Payload), size, byte(size))
		}
	}
	a, bb := got[len(sizes)], got[len(sizes)+1]
	_ = append(a.Payload, 'x') // must not reach b's payload
	if string(a.Payload) != "aa" || string(bb.Payload) != "bb" || cap(a.Payload) != 2 {
		t.Fatalf("payloads %q %q (cap %d)", a.Payload, bb.Payload, cap(a.Payload))
	}

	// A batch of small and large payloads cut from one buffer, which the
	// publisher then reuses.
	var batch []*broker.Message
	for i, size := range sizes {
		p := buf[:size]
		for j := range p {
			p[j] = byte(i)
		}
		batch = append(batch, &broker.Message{ID: fmt.Sprint("batch-", i), Payload: p})
		buf = buf[size:]
		if len(buf) < 4000 {
			buf = make([]byte, 8000)
		}
	}
	publish(t, pub, "t", batch...)
	for _, m := range batch {
		clear(m.Payload)
	}
	for i, size := range sizes {
		m := recv(t, sub).Message()
		if len(m.Payload) != size || size <= 512 && cap(m.Payload) != size || !bytes.Equal(m.Payload, bytes.Repeat([]byte{byte(i)}, size)) {
			t.Fatalf("batch message %s: payload of len %d cap %d, want %d bytes of %d", m.ID, len(m.Payload), cap(m.Payload), size, i)
		}
	}
}
