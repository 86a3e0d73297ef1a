package kafka

import (
	"strconv"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker/driver"
)

// headerRetryAt carries a retry-topic record's due time (unix
// milliseconds); it is stripped on delivery.
const headerRetryAt = driver.HeaderPrefix + "retry-at"

// decodeRecord fills m from r: the ID from the queuekit-id header (or
// "topic/partition/offset" for a record from another producer), the other
// headers as Headers, and Attempt 1 — or, on a record that the retry path
// wrote to a retry topic (retry, with its due time), the attempt in its
// queuekit-attempt header. On such a record it strips the retry headers and
// returns when the record is due (unix nanos).
//
// queuekit-id is how another producer gives a message its ID (its dedupe
// key); queuekit-attempt and queuekit-published-at from anywhere else are
// dropped, never handed on as user headers, so that no producer can forge a
// delivery's attempt count (and trip MaxAttempts) or its publication time,
// which is the record's timestamp.
func decodeRecord(r *kgo.Record, m *driver.Message, retry bool) (notBefore int64) {
	m.Topic = r.Topic
	return decodeRecordIn(r, m, retry, nil)
}

// decodeRecordIn is decodeRecord taking the key and ID from strs (nil: an
// allocation of their own), and leaving m.Topic to the caller.
func decodeRecordIn(r *kgo.Record, m *driver.Message, retry bool, strs *strArena) (notBefore int64) {
	m.Payload = r.Value
	m.PublishedAt = r.Timestamp
	m.Attempt = 1
	var id []byte
	attempt := 0
	for _, h := range r.Headers {
		switch h.Key {
		case driver.HeaderID:
			id = h.Value
		case driver.HeaderAttempt:
			if n, err := strconv.Atoi(string(h.Value)); err == nil && n > 0 {
				attempt = n
			}
		case driver.HeaderPublishedAt:
			// PublishedAt is the record's timestamp.
		case headerRetryAt, driver.HeaderOriginalTopic:
			if !retry {
				m.SetHeader(h.Key, string(h.Value))
			} else if h.Key == headerRetryAt {
				if ms, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil && ms > 0 {
					notBefore = ms * int64(time.Millisecond)
				}
			}
		default:
			m.SetHeader(h.Key, string(h.Value))
		}
	}
	if retry && notBefore > 0 && attempt > 0 {
		m.Attempt = attempt // written by the retry path (see Subscriber.retry)
	}
	// Key and ID share one allocation, or a slice of strs.
	if len(r.Key)+len(id) > 0 {
		s := strs.concat(r.Key, id)
		m.Key, m.ID = s[:len(r.Key)], s[len(r.Key):]
	}
	if m.ID == "" {
		m.ID = positionID(r)
	}
	return notBefore
}

// positionID is the ID of a record from another producer, which has no
// queuekit-id header: its position, "topic/partition/offset".
func positionID(r *kgo.Record) string {
	return r.Topic + "/" + strconv.Itoa(int(r.Partition)) + "/" + strconv.FormatInt(r.Offset, 10)
}

// strArena hands out strings carved from one buffer, so that the keys and
// IDs of a run of records cost one allocation rather than one each. They do
// not alias the fetch response: a key or ID that a user keeps (a dedupe
// store keeps IDs) pins at most one arena buffer (strArenaMax bytes), not
// the response. Bytes are written once, before the string over them is
// handed out, and never again.
type strArena struct{ buf []byte }

const (
	strArenaMax  = 4096 // largest arena buffer
	strArenaSolo = 512  // a key + ID longer than this gets its own allocation
)

// concat returns x followed by y as one string; a nil arena allocates it.
func (a *strArena) concat(x, y []byte) string {
	n := len(x) + len(y)
	if a == nil || n > strArenaSolo {
		var buf [128]byte
		return string(append(append(buf[:0], x...), y...))
	}
	if cap(a.buf)-len(a.buf) < n {
		// Room for a delivery chunk of records like this one or more, in
		// a power of two (an allocation size class, so no byte of it is
		// wasted).
		size := 512
		for size < n*deliveryChunk && size < strArenaMax {
			size *= 2
		}
		a.buf = make([]byte, 0, size)
	}
	start := len(a.buf)
	a.buf = a.buf[:start+n] // no pointer store: only the length changes
	copy(a.buf[start:], x)
	copy(a.buf[start+len(x):], y)
	return unsafe.String(&a.buf[start], n)
}
