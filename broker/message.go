package broker

import (
	"crypto/rand"
	"encoding/hex"
	"github.com/queuekit/queuekit/semantics"
	"sync"
	"time"
)

// Reserved header names. Adapters carry a message's identity in HeaderID so
// that deduplication works across brokers; the rest are written by the
// dead-letter path and the Kafka retry path. User headers must not start with
// HeaderPrefix.
const (
	HeaderPrefix        = "queuekit-"
	HeaderID            = "queuekit-id"
	HeaderPublishedAt   = "queuekit-published-at" // RFC 3339 with nanoseconds
	HeaderAttempt       = "queuekit-attempt"      // where the broker keeps no count of its own
	HeaderOriginalTopic = "queuekit-original-topic"
	HeaderDeadReason    = "queuekit-dead-reason"
	HeaderDeadAttempts  = "queuekit-dead-attempts"
	HeaderFirstFailure  = "queuekit-first-failure"
	HeaderLastFailure   = "queuekit-last-failure"
)

// Message is what is published and what a handler receives.
//
// ID, Key, Payload and Headers are set by the producer. Publish fills in an
// empty ID with a random UUID and sets PublishedAt, on the caller's Message.
// Topic, Attempt and PublishedAt are set on delivery.
type Message struct {
	// ID identifies the message across redeliveries and brokers; it is
	// the idempotency key by default.
	ID string
	// Key partitions and orders: messages with one key keep their order
	// where the adapter claims per-key ordering.
	Key string
	// Payload is the body, carried byte for byte.
	Payload []byte
	// Headers are string metadata, carried both ways on every broker.
	Headers map[string]string

	// Topic the message was delivered from.
	Topic string
	// Attempt is 1 on the first delivery and grows with each redelivery,
	// where the adapter claims attempt counting (0 where it cannot tell).
	Attempt int
	// PublishedAt is when the message was published.
	PublishedAt time.Time
}

// Header returns the value of header name, or "".
func (m *Message) Header(name string) string { return m.Headers[name] }

// SetHeader sets header name to value, allocating the map if needed.
func (m *Message) SetHeader(name, value string) {
	if m.Headers == nil {
		m.Headers = make(map[string]string, 4)
	}
	m.Headers[name] = value
}

// Size is the number of bytes the message takes on the wire, roughly:
// payload, key, ID and headers. Adapters compare it to their limit.
func (m *Message) Size() int {
	n := len(m.Payload) + len(m.Key) + len(m.ID)
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}

// Clone returns a deep copy of m.
func (m *Message) Clone() *Message {
	c := *m
	if m.Payload != nil {
		c.Payload = append([]byte(nil), m.Payload...)
	}
	if m.Headers != nil {
		c.Headers = make(map[string]string, len(m.Headers))
		for k, v := range m.Headers {
			c.Headers[k] = v
		}
	}
	return &c
}

// NewID returns a random (version 4) UUID string.
func NewID() string {
	r := idRandPool.Get().(*idRand)
	if r.off == len(r.buf) {
		_, _ = rand.Read(r.buf[:]) // crypto/rand.Read never fails
		r.off = 0
	}
	var b [16]byte
	copy(b[:], r.buf[r.off:r.off+16])
	r.off += 16
	idRandPool.Put(r)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// idRand is a buffer of random bytes, refilled 64 IDs at a time: one
// getrandom call per 64 IDs instead of one per ID. Each buffer is used by one
// goroutine at a time (sync.Pool), so no byte is handed out twice.
type idRand struct {
	buf [64 * 16]byte
	off int
}

var idRandPool = sync.Pool{New: func() any { return &idRand{off: 64 * 16} }}

// Prepare readies msgs for publishing: it gives an ID to each message that
// has none, stamps PublishedAt, and checks each against maxSize (0 means no
// limit). Adapters call it first in Publish, before any I/O, so that an
// oversize or nil message fails the whole call without sending anything.
func Prepare(op string, msgs []*Message, maxSize int) error {
	now := time.Now()
	for i, m := range msgs {
		if m == nil {
			return Errorf(semantics.InvalidArgument, op, "message %d is nil", i)
		}
		if m.ID == "" {
			m.ID = NewID()
		}
		if maxSize > 0 {
			if n := m.Size(); n > maxSize {
				return &Error{Kind: semantics.InvalidArgument, Op: op, Err: &TooLargeError{ID: m.ID, Size: n, Max: maxSize}}
			}
		}
		if m.PublishedAt.IsZero() {
			m.PublishedAt = now
		}
	}
	return nil
}
