package ingest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/queuekit/queuekit/broker"
)

// Request headers of a single-message publish.
const (
	// HeaderIdempotencyKey becomes the message ID: a retry with the same
	// key publishes a message with the same ID, which consumers
	// deduplicate (middleware/dedupe).
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderKey becomes the message key (partitioning and ordering).
	HeaderKey = "Queuekit-Key"
	// HeaderPrefix + Name becomes the message header name in lower case:
	// "Queuekit-Header-Trace-Id: 7" sets header "trace-id" to "7".
	HeaderPrefix = "Queuekit-Header-"
)

// maxIDLen bounds a message ID or idempotency key.
const maxIDLen = 255

// requestError is a request the handler refuses before publishing.
type requestError struct {
	status int
	reason string
	msg    string
}

func malformed(format string, args ...any) *requestError {
	return &requestError{http.StatusBadRequest, ReasonMalformed, fmt.Sprintf(format, args...)}
}

func tooLarge(format string, args ...any) *requestError {
	return &requestError{http.StatusRequestEntityTooLarge, ReasonTooLarge, fmt.Sprintf(format, args...)}
}

// readBody reads the whole body, at most limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, rec *record) ([]byte, *requestError) {
	if r.ContentLength > limit {
		return nil, tooLarge("the body is %d bytes, over the limit of %d", r.ContentLength, limit)
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	rec.bytes = int64(buf.Len())
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge("the body is over the limit of %d bytes", limit)
		}
		return nil, malformed("reading the body: %v", err)
	}
	return buf.Bytes(), nil
}

// single reads one value of a request header, refusing repeats.
func single(r *http.Request, name string) (string, *requestError) {
	v := r.Header.Values(name)
	switch len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	}
	return "", malformed("header %s is given %d times", name, len(v))
}

// readSingle reads a single-message request: the body is the payload.
func (h *Handler) readSingle(w http.ResponseWriter, r *http.Request, rec *record) ([]*broker.Message, *requestError) {
	m := &broker.Message{}
	var rerr *requestError
	if m.ID, rerr = single(r, HeaderIdempotencyKey); rerr != nil {
		return nil, rerr
	}
	if err := validID(m.ID); err != nil {
		return nil, malformed("%s: %v", HeaderIdempotencyKey, err)
	}
	if m.Key, rerr = single(r, HeaderKey); rerr != nil {
		return nil, rerr
	}
	for name, values := range r.Header {
		hname, ok := cutPrefixFold(name, HeaderPrefix)
		if !ok {
			continue
		}
		if len(values) != 1 {
			return nil, malformed("header %s is given %d times", name, len(values))
		}
		hname = strings.ToLower(hname)
		if err := validHeaderName(hname); err != nil {
			return nil, malformed("header %s: %v", name, err)
		}
		m.SetHeader(hname, values[0])
	}
	body, rerr := readBody(w, r, h.cfg.MaxBodyBytes, rec)
	if rerr != nil {
		return nil, rerr
	}
	m.Payload = body
	return []*broker.Message{m}, nil
}

// line is one NDJSON line of a batch.
type line struct {
	ID      string            `json:"id"`
	Key     string            `json:"key"`
	Headers map[string]string `json:"headers"`
	Payload *string           `json:"payload"` // standard base64
	Text    *string           `json:"text"`    // UTF-8 text, taken as is
}

// readBatch reads a batch request: one JSON object per line.
func (h *Handler) readBatch(w http.ResponseWriter, r *http.Request, rec *record) ([]*broker.Message, *requestError) {
	idemKey, rerr := single(r, HeaderIdempotencyKey)
	if rerr != nil {
		return nil, rerr
	}
	if err := validID(idemKey); err != nil {
		return nil, malformed("%s: %v", HeaderIdempotencyKey, err)
	}
	body, rerr := readBody(w, r, h.cfg.MaxBatchBytes, rec)
	if rerr != nil {
		return nil, rerr
	}
	var msgs []*broker.Message
	for n := 1; len(body) > 0; n++ {
		var raw []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			raw, body = body[:i], body[i+1:]
		} else {
			raw, body = body, nil
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 {
			continue
		}
		if len(msgs) == h.cfg.MaxBatchMessages {
			return nil, tooLarge("the batch has more than %d messages", h.cfg.MaxBatchMessages)
		}
		m, rerr := h.parseLine(raw, n)
		if rerr != nil {
			return nil, rerr
		}
		if m.ID == "" && idemKey != "" {
			m.ID = idemKey + ":" + strconv.Itoa(len(msgs))
		}
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		return nil, malformed("the batch is empty: send one JSON object per line")
	}
	return msgs, nil
}

func (h *Handler) parseLine(raw []byte, n int) (*broker.Message, *requestError) {
	var l line
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return nil, malformed("line %d: %v", n, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, malformed("line %d: more than one JSON value", n)
	}
	m := &broker.Message{ID: l.ID, Key: l.Key}
	if err := validID(l.ID); err != nil {
		return nil, malformed("line %d: id: %v", n, err)
	}
	switch {
	case l.Payload != nil && l.Text != nil:
		return nil, malformed("line %d: give payload (base64) or text, not both", n)
	case l.Payload != nil:
		p, err := base64.StdEncoding.DecodeString(*l.Payload)
		if err != nil {
			return nil, malformed("line %d: payload is not standard base64: %v", n, err)
		}
		m.Payload = p
	case l.Text != nil:
		m.Payload = []byte(*l.Text)
	default:
		return nil, malformed("line %d: payload (base64) or text is required", n)
	}
	if int64(len(m.Payload)) > h.cfg.MaxBodyBytes {
		return nil, tooLarge("line %d: the payload is %d bytes, over the limit of %d", n, len(m.Payload), h.cfg.MaxBodyBytes)
	}
	for k, v := range l.Headers {
		if err := validHeaderName(k); err != nil {
			return nil, malformed("line %d: header %q: %v", n, k, err)
		}
		m.SetHeader(k, v)
	}
	return m, nil
}

func validID(id string) error {
	if len(id) > maxIDLen {
		return fmt.Errorf("longer than %d bytes", maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("only printable ASCII without spaces is allowed")
		}
	}
	return nil
}

func validHeaderName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty header name")
	case strings.HasPrefix(strings.ToLower(name), broker.HeaderPrefix):
		return fmt.Errorf("header names starting with %q are reserved", broker.HeaderPrefix)
	}
	return nil
}

// cutPrefixFold is strings.CutPrefix ignoring ASCII case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return "", false
}
