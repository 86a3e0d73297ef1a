package nats

import (
	"maps"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/queuekit/queuekit/broker/driver"
)

// TestCodecRoundtrip encodes messages the way Publish does, runs the
// header block through nats.go's own wire encoding and parser, and decodes
// it the way a delivery does: everything comes back as it was, and what
// NATS would change travels packed.
func TestCodecRoundtrip(t *testing.T) {
	for name, m := range map[string]*driver.Message{
		"plain": {ID: "id-1", Key: "k", Payload: []byte("p"), Headers: map[string]string{"a": "b", "Mixed-Case": "V", "empty": ""}},
		"unsafe values": {ID: "id-2", Payload: []byte{0, 1, 2}, Headers: map[string]string{
			"multi-line": "line 1\nline 2\r\n\ttabbed", "spaces": "  padded  ", "tab": "\tx", "unicode": "héllo ✓",
		}},
		"unsafe names":      {ID: "id-3", Headers: map[string]string{"a:b": "1", "with space": "2", "ünï": "3", "Status": "404", "Description": "d", "(x)": "4"}},
		"unsafe id and key": {ID: "id\nwith newline", Key: " spaced key ", Payload: nil},
		"no key":            {ID: "id-5"},
	} {
		t.Run(name, func(t *testing.T) {
			msg, size := encode("topic.a", m)
			if msg.Subject != "topic.a" {
				t.Errorf("subject %q", msg.Subject)
			}
			for k, vs := range msg.Header {
				if !safeName(k) || len(vs) != 1 || !safeValue(vs[0]) {
					t.Errorf("header %q = %q is not one NATS carries as it is", k, vs)
				}
			}
			// Through the wire format: nats.go writes the block, parses it.
			block := headerBlock(t, msg)
			if len(block)+len(m.Payload) != size {
				t.Errorf("size %d, wire %d", size, len(block)+len(m.Payload))
			}
			h, err := natsgo.DecodeHeadersMsg(block)
			if err != nil {
				t.Fatal(err)
			}
			var got driver.Message
			stored := time.Unix(100, 0)
			decode(&got, "topic.a", m.Payload, h, "S", 7, 2, stored)
			if got.ID != m.ID || got.Key != m.Key || got.Attempt != 2 || !got.PublishedAt.Equal(stored) || got.Topic != "topic.a" {
				t.Errorf("got ID %q key %q attempt %d at %v topic %q", got.ID, got.Key, got.Attempt, got.PublishedAt, got.Topic)
			}
			if len(m.Headers) == 0 && got.Headers != nil {
				t.Errorf("headers %v, want none", got.Headers)
			}
			if len(m.Headers) > 0 && !maps.Equal(got.Headers, m.Headers) {
				t.Errorf("headers\n got %q\nwant %q", got.Headers, m.Headers)
			}
		})
	}
}

// headerBlock is the header block nats.go puts on the wire for msg.
func headerBlock(t *testing.T, msg *natsgo.Msg) []byte {
	t.Helper()
	// nats.go has no exported encoder; a message's Size counts subject,
	// reply, header block and data, and the block is rebuilt the way
	// nats.go writes it.
	b := []byte("NATS/1.0\r\n")
	for k, vs := range msg.Header {
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, "\r\n"...)
	if got, want := msg.Size()-len(msg.Subject)-len(msg.Reply)-len(msg.Data), len(b); got != want {
		t.Fatalf("nats.go counts a header block of %d bytes, the rebuilt one has %d", got, want)
	}
	return b
}

// A packed header that does not decode is kept as it is, never dropped.
func TestCodecBadPack(t *testing.T) {
	var m driver.Message
	decode(&m, "t", nil, natsgo.Header{HeaderPacked: {"%%%"}, HeaderID: {"x"}}, "S", 1, 1, time.Now())
	if m.ID != "x" || m.Headers[HeaderPacked] != "%%%" {
		t.Errorf("got %+v", m)
	}
}

func TestSubjectMatches(t *testing.T) {
	for _, tc := range []struct {
		filter, subject string
		want            bool
	}{
		{"", "a.b", true}, {">", "a", true}, {"a.b", "a.b", true}, {"a.b", "a.c", false},
		{"a.*", "a.b", true}, {"a.*", "a.b.c", false}, {"a.>", "a.b.c", true}, {"a.>", "a", false},
		{"*.b", "a.b", true}, {"a", "a.b", false}, {"a.b", "a", false},
	} {
		if got := subjectMatches(tc.filter, tc.subject); got != tc.want {
			t.Errorf("subjectMatches(%q, %q) = %v, want %v", tc.filter, tc.subject, got, tc.want)
		}
	}
}

func TestParseAckReply(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  ackMeta
		ok    bool
	}{
		{"$JS.ACK.ORDERS.billing.3.42.17.1700000000000000000.5", ackMeta{"ORDERS", 3, 42, 1700000000000000000}, true},
		{"$JS.ACK._.ACCHASH.ORDERS.billing.1.7.7.1700000000000000001.0.tok", ackMeta{"ORDERS", 1, 7, 1700000000000000001}, true},
		{"$JS.ACK.hub.ACCHASH.ORDERS.billing.2.9.8.5.0", ackMeta{"ORDERS", 2, 9, 5}, true},
		{"_INBOX.x", ackMeta{}, false},
		{"$JS.ACK.ORDERS.billing.x.42.17.1.5", ackMeta{}, false},
		{"$JS.ACK.too.short", ackMeta{}, false},
	} {
		got, ok := parseAckReply(tc.reply)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseAckReply(%q) = %+v, %v; want %+v, %v", tc.reply, got, ok, tc.want, tc.ok)
		}
	}
}
