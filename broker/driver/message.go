package driver

import (
	"crypto/rand"
	"encoding/binary"
	mrand "math/rand/v2"
	"sync"
	"time"
	"unsafe"

	"github.com/queuekit/queuekit/semantics"
)

// Reserved header names. Adapters carry a message's identity in HeaderID so
// that deduplication works across brokers; the rest are written by the
// dead-letter path and the Kafka retry path. Publish refuses user headers
// named HeaderID, HeaderAttempt or HeaderPublishedAt (they would override a
// delivery's identity); the others are written by queuekit's own
// dead-letter and redrive paths.
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
// ID, Key, Payload, Headers and DeliverAt are set by the producer. Publish
// fills in an empty ID with a random UUID and sets PublishedAt, on the
// caller's Message. Topic, Attempt and PublishedAt are set on delivery.
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

	// DeliverAt, when set, is the earliest time the message may be
	// delivered (scheduled delivery); zero, or a time not in the future,
	// means at once. Publish refuses a DeliverAt in the future, before any
	// I/O, on an adapter that does not claim
	// semantics.Capabilities.ScheduledDelivery (kind Unsupported: the
	// transactional outbox schedules on any broker, see outbox.AddAt), and
	// one further ahead than the adapter's Capabilities.MaxDelay (kind
	// InvalidArgument). The time is read on the publisher's clock when
	// Publish runs, and turned into a delay from then.
	//
	// DeliverAt is an instruction to the broker, not part of the message:
	// a delivered Message has a zero DeliverAt on every adapter, so a
	// delivery republished as is (a dead letter, a redrive) goes out at
	// once. A scheduled message is delivered when it is due, not in its
	// key's publish order (messages published without DeliverAt are not
	// held back by it); see each adapter for the order among scheduled
	// messages and how late one may be.
	DeliverAt time.Time
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
	if len(m.Headers) > 0 { // ranging over even an empty map is a runtime call
		for k, v := range m.Headers {
			n += len(k) + len(v)
		}
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
//
// Its 122 random bits come from a ChaCha8 generator (math/rand/v2's,
// cryptographically strong) seeded from crypto/rand, one per sync.Pool
// entry, which costs a few nanoseconds per ID where crypto/rand.Read costs
// 25. The text of idsPerChunk IDs shares one allocation (like the memory
// adapter's small payloads): an ID kept alive keeps its chunk, at most
// idsPerChunk*36 bytes, alive with it.
func NewID() string {
	g := idGens.Get().(*idGen)
	if g.room == nil || g.used == len(g.room) {
		g.room, g.used = new([idLen * idsPerChunk]byte), 0
	}
	s := g.room[g.used : g.used+idLen : g.used+idLen]
	g.used += idLen
	hi, lo := g.rng.Uint64(), g.rng.Uint64()
	idGens.Put(g)
	hi = hi&^0xf000 | 0x4000       // version 4: the high nibble of byte 6
	lo = lo&^(0xc0<<56) | 0x80<<56 // variant 10: the high bits of byte 8
	var h, l [16]byte
	hex16(h[:], hi)
	hex16(l[:], lo)
	copy(s[0:8], h[0:8])
	s[8] = '-'
	copy(s[9:13], h[8:12])
	s[13] = '-'
	copy(s[14:18], h[12:16])
	s[18] = '-'
	copy(s[19:23], l[0:4])
	s[23] = '-'
	copy(s[24:36], l[4:16])
	// s is this ID's alone (used moved past it) and never written again.
	return unsafe.String(&s[0], idLen)
}

const (
	idLen       = 36
	idsPerChunk = 16 // 576 bytes: a size class of its own
)

// idGen makes IDs for one goroutine at a time (sync.Pool): its generator,
// and room for the text of the next ones.
type idGen struct {
	rng  *mrand.ChaCha8
	room *[idLen * idsPerChunk]byte
	used int // room[:used] is taken
}

var idGens = sync.Pool{New: func() any {
	var seed [32]byte
	_, _ = rand.Read(seed[:]) // crypto/rand.Read never fails
	return &idGen{rng: mrand.NewChaCha8(seed)}
}}

// hex16 writes v's 8 bytes, big-endian, as 16 lower-case hex digits into
// dst, eight at a time (encoding/hex's loop, a byte at a time, was a third
// of NewID's cost).
func hex16(dst []byte, v uint64) {
	binary.BigEndian.PutUint64(dst[0:8], hexDigits(uint32(v>>32)))
	binary.BigEndian.PutUint64(dst[8:16], hexDigits(uint32(v)))
}

// hexDigits spreads x's eight nibbles over the bytes of a uint64, most
// significant first, and turns each into its ASCII hex digit.
func hexDigits(x uint32) uint64 {
	v := uint64(x)
	v = (v | v<<16) & 0x0000ffff0000ffff
	v = (v | v<<8) & 0x00ff00ff00ff00ff
	v = (v | v<<4) & 0x0f0f0f0f0f0f0f0f
	// A nibble of 10 or more carries into bit 4 when 6 is added: those
	// bytes get 'a'-'0'-10 more than '0'.
	letters := (v + 0x0606060606060606) >> 4 & 0x0101010101010101
	return v + 0x3030303030303030 + letters*('a'-'0'-10)
}

// Prepare readies msgs the way package broker's Publish does before calling
// a driver (IDs, PublishedAt, the size limit; maxSize 0 means none). A
// driver calls it only for messages it publishes on its own account (retry
// topics, dead letters, redrive).
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
