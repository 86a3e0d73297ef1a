package redisstreams

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/queuekit/queuekit/broker/driver"
)

// Stream entry fields. A message is one entry:
//
//	_id    Message.ID
//	_key   Message.Key (absent when empty)
//	_at    Message.PublishedAt, Unix nanoseconds in decimal
//	h:NAME one per header NAME
//	_body  Message.Payload, byte for byte
const (
	fieldID     = "_id"
	fieldKey    = "_key"
	fieldAt     = "_at"
	fieldBody   = "_body"
	headerField = "h:"
)

// encode appends m's entry fields, as XADD arguments, to v, and returns
// v, strs and at grown. Every string is boxed in place (box): strs holds
// them (m's ID, key, header values, its payload viewed as a string, its
// time) and must have room for strCount(m) more, so that it never moves
// while the arguments are in use; at is a buffer for the decimal time,
// with room for 20 more bytes. The payload is not copied: the arguments
// are valid while m is not changed.
func encode(v []any, strs []string, at []byte, m *driver.Message) ([]any, []string, []byte) {
	strs = append(strs, m.ID)
	v = append(v, fieldID, box(&strs[len(strs)-1]))
	if m.Key != "" {
		strs = append(strs, m.Key)
		v = append(v, fieldKey, box(&strs[len(strs)-1]))
	}
	start := len(at)
	at = strconv.AppendInt(at, m.PublishedAt.UnixNano(), 10)
	strs = append(strs, view(at[start:]))
	v = append(v, fieldAt, box(&strs[len(strs)-1]))
	for k, h := range m.Headers {
		strs = append(strs, h)
		v = append(v, headerName(k), box(&strs[len(strs)-1]))
	}
	strs = append(strs, view(m.Payload))
	return append(v, fieldBody, box(&strs[len(strs)-1])), strs, at
}

// fieldCount is how many values encode appends for m.
func fieldCount(m *driver.Message) int {
	n := 6 + 2*len(m.Headers)
	if m.Key != "" {
		n += 2
	}
	return n
}

// strCount is how many strings encode keeps in strs for m.
func strCount(m *driver.Message) int { return fieldCount(m) / 2 }

// box returns the string *p as an interface value without copying its
// header to the heap, as converting *p to any would: the interface's data
// word points at *p itself (a string is not pointer-shaped, so an
// interface holding one always points at a header). Whoever uses the
// value sees an ordinary string; *p must not change while it is in use.
// One XADD has 4 such values or more per message, which converting
// would allocate one by one.
func box(p *string) any {
	a := any("")
	(*[2]unsafe.Pointer)(unsafe.Pointer(&a))[1] = unsafe.Pointer(p)
	return a
}

// headerNames caches the field name of each header name seen, boxed, so
// that encoding a header allocates nothing for its name. It stops growing
// at maxHeaderNames names.
var headerNames sync.Map // string -> any (string "h:"+name)

var headerNameCount atomic.Int32

const maxHeaderNames = 4096

func headerName(name string) any {
	if f, ok := headerNames.Load(name); ok {
		return f
	}
	var f any = headerField + name
	if headerNameCount.Load() < maxHeaderNames {
		if _, loaded := headerNames.LoadOrStore(name, f); !loaded {
			headerNameCount.Add(1)
		}
	}
	return f
}

// decoder fills a delivered Message from an entry's fields, one at a time.
type decoder struct {
	m     *driver.Message
	atSet bool
	// names, when set, says that the fields are views of a buffer that is
	// reused (see reply.go): what the message keeps is copied into arena,
	// header names through names, which interns them.
	names map[string]string
	arena []byte // sized beforehand for all that is copied: never grows
}

// keep returns s, copied into the arena when it is a view.
func (d *decoder) keep(s string) string {
	if d.names == nil || s == "" {
		return s
	}
	start := len(d.arena)
	d.arena = append(d.arena, s...)
	return unsafe.String(&d.arena[start], len(s))
}

func (d *decoder) field(name, value string) {
	switch name {
	case fieldID:
		d.m.ID = d.keep(value)
	case fieldKey:
		d.m.Key = d.keep(value)
	case fieldAt:
		if ns, ok := parseNanos(value); ok {
			d.m.PublishedAt, d.atSet = time.Unix(0, ns), true
		}
	case fieldBody:
		if d.names != nil {
			d.m.Payload = append(make([]byte, 0, len(value)), value...)
		} else {
			d.m.Payload = owned(value)
		}
	default:
		// h:NAME is header NAME; a field of another producer without the
		// prefix is a header of its own name.
		name = strings.TrimPrefix(name, headerField)
		if reserved(name) {
			return // never lets a producer set a delivery's identity
		}
		if d.names != nil {
			name = intern(d.names, name)
			value = d.keep(value)
		}
		if d.m.Headers == nil {
			d.m.Headers = make(map[string]string, 4)
		}
		d.m.Headers[name] = value
	}
}

// intern returns a string of its own equal to name (a view), the same
// for every message while names has fewer than maxHeaderNames names.
func intern(names map[string]string, name string) string {
	if s, ok := names[name]; ok {
		return s
	}
	s := strings.Clone(name)
	if len(names) < maxHeaderNames {
		names[s] = s
	}
	return s
}

// finish completes the message of entry id of stream (shard 0 or another)
// of topic: an entry without _id gets "<stream>/<entry id>", one without
// _at the time in its entry id.
func (d *decoder) finish(topic, stream, id string, attempt int) {
	m := d.m
	m.Topic, m.Attempt = topic, attempt
	if m.ID == "" {
		m.ID = stream + "/" + id
	}
	if !d.atSet {
		ms, _, _ := strings.Cut(id, "-")
		if n, err := strconv.ParseInt(ms, 10, 64); err == nil {
			m.PublishedAt = time.UnixMilli(n)
		}
	}
}

// parseNanos parses a time in Unix nanoseconds as strconv.ParseInt does,
// the decimal digits encode writes (up to 19, with or without a minus
// sign) by hand: ParseInt's generality was a visible part of decoding an
// entry.
func parseNanos(s string) (int64, bool) {
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || len(digits) > 19 {
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil
	}
	var u uint64 // 19 digits fit
	for i := 0; i < len(digits); i++ {
		c := digits[i] - '0'
		if c > 9 {
			n, err := strconv.ParseInt(s, 10, 64)
			return n, err == nil
		}
		u = 10*u + uint64(c)
	}
	if len(digits) < len(s) {
		if u > 1<<63 {
			return 0, false
		}
		return -int64(u), true
	}
	if u > 1<<63-1 {
		return 0, false
	}
	return int64(u), true
}

// owned returns the bytes of s without copying them. The strings decoded
// here are go-redis's parse of one reply: each bulk string has memory of
// its own (proto.Reader allocates it), referred to by nothing but the
// reply, which is dropped once decoded; so the Message may own it.
func owned(s string) []byte {
	if s == "" {
		return []byte{}
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

func reserved(name string) bool {
	return name == driver.HeaderID || name == driver.HeaderAttempt || name == driver.HeaderPublishedAt
}

// decodeMap decodes an entry into m (a zero Message) as go-redis parses
// XREADGROUP replies.
func decodeMap(m *driver.Message, topic, stream, id string, values map[string]any, attempt int) {
	d := decoder{m: m}
	for k, v := range values {
		s, _ := v.(string)
		d.field(k, s)
	}
	d.finish(topic, stream, id, attempt)
}

// decodeFlat decodes an entry's fields as a script returns them: name,
// value, name, value...
func decodeFlat(topic, stream, id string, fields []any, attempt int) *driver.Message {
	m := new(driver.Message)
	decodeFields(m, topic, stream, id, fields, attempt)
	return m
}

// decodeFields decodes an entry into m (a zero Message) from its fields as
// a flat list: name, value, name, value...
func decodeFields(m *driver.Message, topic, stream, id string, fields []any, attempt int) {
	d := decoder{m: m}
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := fields[i].(string)
		v, _ := fields[i+1].(string)
		d.field(k, v)
	}
	d.finish(topic, stream, id, attempt)
}

// decodeView decodes entry id into m (a zero Message) from its fields as
// views of the reader's buffer (see reply.go): name, value, name, value...
// It returns the entry ID as a string of its own. The payload is copied
// into an allocation of its own; the short strings the message keeps (the
// entry ID, ID, key and header values) into one allocation per message,
// so that one of them kept (a message ID in a deduplication store) holds
// a few bytes, never a payload. Header names are interned in names.
func decodeView(m *driver.Message, names map[string]string, topic, stream, id string, fields []string, attempt int) string {
	size := len(id)
	for i := 0; i+1 < len(fields); i += 2 {
		if f := fields[i]; f != fieldBody && f != fieldAt {
			size += len(fields[i+1])
		}
	}
	d := decoder{m: m, names: names, arena: make([]byte, 0, size)}
	id = d.keep(id)
	for i := 0; i+1 < len(fields); i += 2 {
		d.field(fields[i], fields[i+1])
	}
	d.finish(topic, stream, id, attempt)
	return id
}
