package sqs

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker/driver"
)

// Message attributes that carry queuekit's own fields. Every other
// attribute is a header.
const (
	// AttrID carries Message.ID (driver.HeaderID).
	AttrID = driver.HeaderID
	// AttrPublishedAt carries Message.PublishedAt, RFC 3339 with
	// nanoseconds (driver.HeaderPublishedAt).
	AttrPublishedAt = driver.HeaderPublishedAt
	// AttrKey carries a non-empty Message.Key.
	AttrKey = "queuekit-key"
	// AttrEncoding is "base64" when the body is the base64 encoding of a
	// payload that is not valid SQS text, and "empty" for an empty
	// payload (SQS refuses an empty body). Absent, the body is the payload.
	AttrEncoding = "queuekit-encoding"
	// AttrHeaders packs the headers that do not fit in attributes of
	// their own: a JSON object of strings (DataType String), or, when a
	// name or value is not valid SQS text, a Binary value of
	// uvarint-length-prefixed name and value pairs.
	AttrHeaders = "queuekit-headers"
)

// MaxAttributes is how many message attributes SQS allows on one message.
const MaxAttributes = 10

const (
	dtString = "String"
	dtBinary = "Binary"
	// emptyBody stands in for an empty payload (with AttrEncoding=empty).
	emptyBody = "-"
)

// fieldAttr reports whether name is one of the attributes that carry
// queuekit's own fields; a header of that name is not sent.
func fieldAttr(name string) bool {
	switch name {
	case AttrID, AttrPublishedAt, AttrKey, AttrEncoding, AttrHeaders:
		return true
	}
	return false
}

// encoded is a message ready for SendMessageBatch or PublishBatch.
type encoded struct {
	body  string
	attrs map[string]types.MessageAttributeValue
	group string // FIFO MessageGroupId
	dedup string // FIFO MessageDeduplicationId
	size  int    // as SQS counts it: body plus attribute names, types and values
	// deliverAt is the message's earliest delivery time (zero: at once);
	// the delay is computed when the batch is sent.
	deliverAt time.Time
}

// encode turns m into an SQS message: the payload as the body (base64 when
// it is not valid SQS text), ID, PublishedAt and Key as attributes, and the
// headers as attributes of their own as far as the 10-attribute limit
// allows, the rest packed into AttrHeaders. On a FIFO queue the key is the
// MessageGroupId (the ID when the key is empty, so keyless messages are not
// serialised behind each other) and the ID is the MessageDeduplicationId.
func encode(m *driver.Message, fifo bool) encoded {
	e := encoded{attrs: make(map[string]types.MessageAttributeValue, 3+len(m.Headers)), deliverAt: m.DeliverAt}
	switch {
	case len(m.Payload) == 0:
		e.body = emptyBody
		e.put(AttrEncoding, "empty")
	case validText(m.Payload):
		e.body = string(m.Payload)
	default:
		e.body = base64.StdEncoding.EncodeToString(m.Payload)
		e.put(AttrEncoding, "base64")
	}
	e.size = len(e.body)
	e.put(AttrID, m.ID)
	e.put(AttrPublishedAt, m.PublishedAt.UTC().Format(time.RFC3339Nano))
	if m.Key != "" {
		e.put(AttrKey, m.Key)
	}
	if fifo {
		e.group = fifoID(m.Key)
		if m.Key == "" {
			e.group = fifoID(m.ID)
		}
		e.dedup = fifoID(m.ID)
	}
	if len(m.Headers) == 0 {
		return e
	}

	names := make([]string, 0, len(m.Headers))
	for name := range m.Headers {
		if !fieldAttr(name) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var own, packed []string
	for _, name := range names {
		if validAttrName(name) && m.Headers[name] != "" {
			own = append(own, name)
		} else {
			packed = append(packed, name)
		}
	}
	room := MaxAttributes - len(e.attrs)
	if len(packed) > 0 || len(own) > room {
		keep := min(len(own), room-1)
		packed = append(packed, own[keep:]...)
		own = own[:keep]
	}
	for _, name := range own {
		e.put(name, m.Headers[name])
	}
	if len(packed) > 0 {
		sort.Strings(packed)
		e.pack(packed, m.Headers)
	}
	return e
}

// put adds attribute name with value v, String when v is valid SQS text and
// Binary otherwise.
func (e *encoded) put(name, v string) {
	if validText([]byte(v)) {
		e.attrs[name] = types.MessageAttributeValue{DataType: aws.String(dtString), StringValue: aws.String(v)}
		e.size += len(name) + len(dtString) + len(v)
		return
	}
	e.attrs[name] = types.MessageAttributeValue{DataType: aws.String(dtBinary), BinaryValue: []byte(v)}
	e.size += len(name) + len(dtBinary) + len(v)
}

func (e *encoded) pack(names []string, headers map[string]string) {
	obj := make(map[string]string, len(names))
	for _, n := range names {
		obj[n] = headers[n]
	}
	if j, err := json.Marshal(obj); err == nil && allValidUTF8(names, headers) && validText(j) {
		e.attrs[AttrHeaders] = types.MessageAttributeValue{DataType: aws.String(dtString), StringValue: aws.String(string(j))}
		e.size += len(AttrHeaders) + len(dtString) + len(j)
		return
	}
	var b []byte
	for _, n := range names {
		b = binary.AppendUvarint(b, uint64(len(n)))
		b = append(b, n...)
		v := headers[n]
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	e.attrs[AttrHeaders] = types.MessageAttributeValue{DataType: aws.String(dtBinary), BinaryValue: b}
	e.size += len(AttrHeaders) + len(dtBinary) + len(b)
}

func allValidUTF8(names []string, headers map[string]string) bool {
	for _, n := range names {
		if !utf8.ValidString(n) || !utf8.ValidString(headers[n]) {
			return false
		}
	}
	return true
}

// fifoID makes s usable as a MessageGroupId or MessageDeduplicationId: at
// most 128 characters from ASCII 33-126. Other strings are replaced by a
// base64url encoding of themselves (distinct strings stay distinct),
// shortened to a hash when even that is too long.
func fifoID(s string) string {
	ok := len(s) <= 128
	for i := 0; ok && i < len(s); i++ {
		ok = s[i] >= 33 && s[i] <= 126
	}
	if ok {
		return s
	}
	enc := "~" + base64.RawURLEncoding.EncodeToString([]byte(s))
	if len(enc) <= 128 {
		return enc
	}
	return "~" + hashString(s)
}

// decode turns a received SQS message into a queuekit message. Messages
// that other producers sent (no AttrID) get the SQS MessageId as their ID,
// the MessageGroupId as their key and SentTimestamp as PublishedAt. It
// always returns a message; the error says what did not decode (the
// payload is then the raw body).
func decode(sm types.Message, topic string) (m *driver.Message, derr error) {
	m = &driver.Message{Topic: topic}
	body := aws.ToString(sm.Body)
	attrs := sm.MessageAttributes
	switch enc := attrString(attrs, AttrEncoding); enc {
	case "":
		m.Payload = []byte(body)
	case "empty":
		m.Payload = []byte{}
	case "base64":
		p, err := base64.StdEncoding.DecodeString(body)
		if err != nil {
			m.Payload = []byte(body)
			derr = errors.New("body marked base64 does not decode: " + err.Error())
		} else {
			m.Payload = p
		}
	default:
		m.Payload = []byte(body)
		derr = errors.New("unknown " + AttrEncoding + " " + strconv.Quote(enc))
	}
	_, ours := attrs[AttrID]
	if ours {
		m.ID = attrString(attrs, AttrID)
		m.Key = attrString(attrs, AttrKey)
		if t, err := time.Parse(time.RFC3339Nano, attrString(attrs, AttrPublishedAt)); err == nil {
			m.PublishedAt = t
		}
	} else {
		m.ID = aws.ToString(sm.MessageId)
		m.Key = sm.Attributes[string(types.MessageSystemAttributeNameMessageGroupId)]
	}
	if m.PublishedAt.IsZero() {
		if ms, err := strconv.ParseInt(sm.Attributes[string(types.MessageSystemAttributeNameSentTimestamp)], 10, 64); err == nil {
			m.PublishedAt = time.UnixMilli(ms)
		}
	}
	if n, err := strconv.Atoi(sm.Attributes[string(types.MessageSystemAttributeNameApproximateReceiveCount)]); err == nil {
		m.Attempt = n
	}
	for name, v := range attrs {
		if fieldAttr(name) {
			continue
		}
		if m.Headers == nil {
			m.Headers = make(map[string]string, len(attrs))
		}
		m.Headers[name] = attrValue(v)
	}
	if v, ok := attrs[AttrHeaders]; ok {
		if err := unpack(v, m); err != nil && derr == nil {
			derr = err
		}
	}
	return m, derr
}

func unpack(v types.MessageAttributeValue, m *driver.Message) error {
	if m.Headers == nil {
		m.Headers = make(map[string]string)
	}
	if strings.HasPrefix(aws.ToString(v.DataType), dtString) {
		var obj map[string]string
		if err := json.Unmarshal([]byte(aws.ToString(v.StringValue)), &obj); err != nil {
			return errors.New(AttrHeaders + " is not a JSON object of strings: " + err.Error())
		}
		for k, s := range obj {
			m.Headers[k] = s
		}
		return nil
	}
	b := v.BinaryValue
	next := func() (string, bool) {
		n, w := binary.Uvarint(b)
		if w <= 0 || uint64(len(b)-w) < n {
			return "", false
		}
		s := string(b[w : w+int(n)])
		b = b[w+int(n):]
		return s, true
	}
	for len(b) > 0 {
		name, ok1 := next()
		val, ok2 := next()
		if !ok1 || !ok2 {
			return errors.New(AttrHeaders + " binary pack is truncated")
		}
		m.Headers[name] = val
	}
	return nil
}

func attrString(attrs map[string]types.MessageAttributeValue, name string) string {
	v, ok := attrs[name]
	if !ok {
		return ""
	}
	return attrValue(v)
}

// attrValue returns an attribute's value as a string: StringValue for the
// String and Number types (and their custom subtypes), the bytes of
// BinaryValue for Binary.
func attrValue(v types.MessageAttributeValue) string {
	if strings.HasPrefix(aws.ToString(v.DataType), dtBinary) {
		return string(v.BinaryValue)
	}
	return aws.ToString(v.StringValue)
}

// validText reports whether b is UTF-8 made only of the characters SQS
// accepts in a body or attribute: #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD
// #x10000-#x10FFFF.
func validText(b []byte) bool {
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf {
			if c < 0x20 && c != '\t' && c != '\n' && c != '\r' {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return false
		}
		if (r >= 0xD800 && r <= 0xDFFF) || r == 0xFFFE || r == 0xFFFF {
			return false
		}
		i += n
	}
	return true
}

// validAttrName reports whether name is allowed as an SQS message
// attribute name: 1-256 of A-Z a-z 0-9 _ - ., not starting or ending with
// '.', no "..", and not starting with "AWS." or "Amazon.".
func validAttrName(name string) bool {
	if name == "" || len(name) > 256 || name[0] == '.' || name[len(name)-1] == '.' || strings.Contains(name, "..") {
		return false
	}
	lower := strings.ToLower(name)
	if strings.HasPrefix(lower, "aws.") || strings.HasPrefix(lower, "amazon.") {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
