package nats

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/queuekit/queuekit/broker/driver"
)

// NATS headers that carry queuekit's own fields. Every other header is a
// message header.
const (
	// HeaderID carries Message.ID (driver.HeaderID).
	HeaderID = driver.HeaderID
	// HeaderKey carries a non-empty Message.Key.
	HeaderKey = "queuekit-key"
	// HeaderPacked carries, base64 (standard, unpadded), the names and
	// values that a NATS header cannot hold as they are: names outside
	// printable ASCII or with one of "():;,/<=>?@[\]{}, values with CR or
	// LF or leading or trailing blanks (NATS trims and flattens those),
	// and the names Status and Description (which the NATS client reads
	// as a status). Each is a uvarint length and the bytes, name then
	// value; an ID or key that is not header-safe travels here too, under
	// HeaderID or HeaderKey.
	HeaderPacked = "queuekit-headers"
)

// ownHeader reports whether a user header named name would collide with a
// header the adapter writes; Publish refuses it.
func ownHeader(name string) bool { return name == HeaderKey || name == HeaderPacked }

// headerBlockOverhead is "NATS/1.0\r\n" and the final "\r\n".
const headerBlockOverhead = 12

// encodeInto makes msg the NATS message of m on subject and returns its
// size on the wire as max_payload counts it (payload and header block).
func encodeInto(msg *nats.Msg, subject string, m *driver.Message) int {
	if m.Key == "" && len(m.Headers) == 0 && safeValue(m.ID) {
		// The ID alone: a recycled map when there is one.
		h, ok := idHeaders.Get().(nats.Header)
		if ok {
			h[HeaderID][0] = m.ID
		} else {
			h = nats.Header{HeaderID: {m.ID}}
		}
		*msg = nats.Msg{Subject: subject, Header: h, Data: m.Payload}
		return len(m.Payload) + headerBlockOverhead + len(HeaderID) + len(m.ID) + 4
	}
	n := 1 + len(m.Headers)
	if m.Key != "" {
		n++
	}
	h := make(nats.Header, n)
	// One backing array for the single values of every header.
	vals := make([]string, 0, n)
	size := len(m.Payload) + headerBlockOverhead
	var packed []byte
	put := func(name, value string) {
		if safeName(name) && safeValue(value) {
			vals = append(vals, value)
			h[name] = vals[len(vals)-1 : len(vals) : len(vals)]
			size += len(name) + len(value) + 4 // ": " and "\r\n"
			return
		}
		packed = binary.AppendUvarint(packed, uint64(len(name)))
		packed = append(packed, name...)
		packed = binary.AppendUvarint(packed, uint64(len(value)))
		packed = append(packed, value...)
	}
	put(HeaderID, m.ID)
	if m.Key != "" {
		put(HeaderKey, m.Key)
	}
	for k, v := range m.Headers {
		put(k, v)
	}
	if packed != nil {
		v := base64.RawStdEncoding.EncodeToString(packed)
		h[HeaderPacked] = []string{v}
		size += len(HeaderPacked) + len(v) + 4
	}
	*msg = nats.Msg{Subject: subject, Header: h, Data: m.Payload}
	return size
}

// idHeaders recycles the header maps of published messages that carried
// an ID alone (the common case): nats.go is done with a message once its
// ack (or failure) was reported, and the next message overwrites the value.
var idHeaders sync.Pool

// recycleHeader gives h back for another message when it holds the ID
// alone.
func recycleHeader(h nats.Header) {
	if len(h) == 1 {
		if v := h[HeaderID]; len(v) == 1 {
			idHeaders.Put(h)
		}
	}
}

// encode is encodeInto on a new message.
func encode(subject string, m *driver.Message) (*nats.Msg, int) {
	msg := new(nats.Msg)
	size := encodeInto(msg, subject, m)
	return msg, size
}

// safeName reports whether a header name reaches a NATS consumer as it is
// (nats.go refuses the others; Status and Description mark status
// messages).
func safeName(name string) bool {
	if name == "" || name == "Status" || name == "Description" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"()/,:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// safeValue reports whether a header value reaches a NATS consumer as it
// is: NATS replaces CR and LF with spaces and trims leading and trailing
// blanks.
func safeValue(v string) bool {
	if v == "" {
		return true
	}
	if blank(v[0]) || blank(v[len(v)-1]) {
		return false
	}
	return strings.IndexByte(v, '\n') < 0 && strings.IndexByte(v, '\r') < 0
}

func blank(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// errBadPack: a HeaderPacked value that does not decode.
var errBadPack = errors.New("header " + HeaderPacked + " does not decode")

// decode fills m from a delivered NATS message: ID and key from their
// headers (the ID falls back to the Nats-Msg-Id header, then to
// "<stream>:<sequence>", for messages other clients published), the
// other headers as they are (several values of one name joined with ", "),
// HeaderPacked unpacked (or kept as a header when it does not decode, so
// that nothing is lost). Attempt and PublishedAt come from the delivery's
// metadata, never from a header: a queuekit-attempt or
// queuekit-published-at header written by another client is dropped.
func decode(m *driver.Message, subject string, data []byte, h nats.Header, stream string, seq uint64, attempt uint64, stored time.Time) {
	m.Topic = subject
	m.Payload = data
	m.Attempt = int(attempt)
	m.PublishedAt = stored
	var packed string
	for k, vs := range h {
		if len(vs) == 0 {
			continue
		}
		v := vs[0]
		if len(vs) > 1 {
			v = strings.Join(vs, ", ")
		}
		switch k {
		case HeaderID:
			m.ID = v
		case HeaderKey:
			m.Key = v
		case HeaderPacked:
			packed = v
		case driver.HeaderAttempt, driver.HeaderPublishedAt:
		default:
			if m.Headers == nil {
				m.Headers = make(map[string]string, len(h))
			}
			m.Headers[k] = v
		}
	}
	if packed != "" {
		if err := unpack(m, packed); err != nil {
			if m.Headers == nil {
				m.Headers = make(map[string]string, 1)
			}
			m.Headers[HeaderPacked] = packed
		}
	}
	if m.ID == "" {
		if id := h.Get(nats.MsgIdHdr); id != "" {
			m.ID = id
		} else {
			m.ID = stream + ":" + strconv.FormatUint(seq, 10)
		}
	}
}

func unpack(m *driver.Message, packed string) error {
	raw, err := base64.RawStdEncoding.DecodeString(packed)
	if err != nil {
		return errBadPack
	}
	next := func() (string, bool) {
		n, w := binary.Uvarint(raw)
		if w <= 0 || uint64(len(raw)-w) < n {
			return "", false
		}
		s := string(raw[w : w+int(n)])
		raw = raw[w+int(n):]
		return s, true
	}
	for len(raw) > 0 {
		k, ok1 := next()
		v, ok2 := next()
		if !ok1 || !ok2 {
			return errBadPack
		}
		switch k {
		case HeaderID:
			m.ID = v
		case HeaderKey:
			m.Key = v
		case driver.HeaderAttempt, driver.HeaderPublishedAt:
		default:
			if m.Headers == nil {
				m.Headers = make(map[string]string)
			}
			m.Headers[k] = v
		}
	}
	return nil
}

// ackMeta is what a delivery's reply subject says about it.
type ackMeta struct {
	stream    string
	delivered uint64 // the delivery count: Message.Attempt
	streamSeq uint64
	timestamp int64 // when the stream stored the message, Unix nanoseconds
}

// parseAckReply reads a JetStream delivery's reply subject without
// allocating:
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
//	$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
func parseAckReply(reply string) (ackMeta, bool) {
	const prefix = "$JS.ACK."
	if !strings.HasPrefix(reply, prefix) {
		return ackMeta{}, false
	}
	rest := reply[len(prefix):]
	var tok [10]string
	n := 0
	for n < len(tok) {
		t, r, more := strings.Cut(rest, ".")
		tok[n] = t
		n++
		if !more {
			break
		}
		rest = r
	}
	switch {
	case n == 7: // v1
	case n >= 9: // v2: skip domain and account hash
		copy(tok[:], tok[2:])
	default:
		return ackMeta{}, false
	}
	m := ackMeta{stream: tok[0], delivered: parseNum(tok[2]), streamSeq: parseNum(tok[3]), timestamp: int64(parseNum(tok[5]))}
	return m, m.delivered > 0 && m.streamSeq > 0
}

func parseNum(s string) uint64 {
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}
