package sqs

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
)

// wire turns an encoded message into what ReceiveMessage returns for it.
func wire(e encoded, receives int) types.Message {
	sys := map[string]string{"ApproximateReceiveCount": fmt.Sprint(receives), "SentTimestamp": "1700000000000"}
	if e.group != "" {
		sys["MessageGroupId"] = e.group
	}
	return types.Message{MessageId: aws.String("sqs-id"), Body: aws.String(e.body), MessageAttributes: e.attrs, Attributes: sys}
}

func roundTrip(t *testing.T, m *broker.Message, fifo bool) *broker.Message {
	t.Helper()
	if err := driver.Prepare("test", []*broker.Message{m}, 0); err != nil {
		t.Fatal(err)
	}
	e := encode(m, fifo)
	if len(e.attrs) > MaxAttributes {
		t.Fatalf("%d attributes, over the SQS limit of %d", len(e.attrs), MaxAttributes)
	}
	if !validText([]byte(e.body)) {
		t.Fatalf("body %q is not valid SQS text", e.body)
	}
	for name, v := range e.attrs {
		if !validAttrName(name) {
			t.Fatalf("attribute name %q is not valid for SQS", name)
		}
		if aws.ToString(v.DataType) == dtString && (aws.ToString(v.StringValue) == "" || !validText([]byte(aws.ToString(v.StringValue)))) {
			t.Fatalf("attribute %s has String value %q that SQS refuses", name, aws.ToString(v.StringValue))
		}
	}
	got, err := decode(wire(e, 3), "topic")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || got.Key != m.Key || !bytes.Equal(got.Payload, m.Payload) || !got.PublishedAt.Equal(m.PublishedAt) || got.Attempt != 3 || got.Topic != "topic" {
		t.Errorf("round trip: got id %q key %q payload %q at %v attempt %d; want %q %q %q %v 3",
			got.ID, got.Key, got.Payload, got.PublishedAt, got.Attempt, m.ID, m.Key, m.Payload, m.PublishedAt)
	}
	if len(got.Headers) != len(m.Headers) {
		t.Errorf("round trip: %d headers %q, want %d %q", len(got.Headers), got.Headers, len(m.Headers), m.Headers)
	}
	for k, v := range m.Headers {
		if g, ok := got.Headers[k]; !ok || g != v {
			t.Errorf("header %q = %q (present %v), want %q", k, g, ok, v)
		}
	}
	return got
}

func TestCodecRoundTrips(t *testing.T) {
	many := map[string]string{}
	for i := range 25 {
		many[fmt.Sprintf("header-%02d", i)] = strings.Repeat("v", i+1)
	}
	for name, m := range map[string]*broker.Message{
		"text":               {Key: "k", Payload: []byte("plain text ✓"), Headers: map[string]string{"a": "b"}},
		"binary":             {Payload: []byte{0, 1, 2, 0xfe, 0xff}},
		"invalid utf8":       {Payload: []byte{'a', 0xc3}},
		"control chars":      {Payload: []byte("a\x01b")},
		"U+FFFE":             {Payload: []byte("a\uFFFEb")},
		"empty":              {Payload: []byte{}},
		"many headers":       {Payload: []byte("x"), Headers: many},
		"odd header names":   {Payload: []byte("x"), Headers: map[string]string{"has space": "1", "AWS.thing": "2", ".dot": "3", "a..b": "4", "ünï": "5", "": "6", "Content-Type": "text/plain"}},
		"odd header values":  {Payload: []byte("x"), Headers: map[string]string{"empty": "", "nl": "a\nb", "ctl": "\x00\x07", "bad": "\xff\xfe", "uni": "✓"}},
		"binary pack":        {Payload: []byte("x"), Headers: map[string]string{"\xff name": "\x00", "ok": "1", "": ""}},
		"reserved collision": {ID: "id-1", Payload: []byte("x"), Headers: map[string]string{broker.HeaderDeadReason: "boom"}},
		"key not text":       {Key: "k\x00\xff", Payload: []byte("x")},
	} {
		t.Run(name, func(t *testing.T) {
			roundTrip(t, m, false)
			roundTrip(t, m.Clone(), true)
		})
	}
}

func TestCodecPacksOnlyWhatDoesNotFit(t *testing.T) {
	h := map[string]string{}
	for i := range 7 {
		h[fmt.Sprint("h", i)] = "v"
	}
	m := &broker.Message{ID: "id", Key: "k", Payload: []byte("x"), Headers: h, PublishedAt: time.Now()}
	e := encode(m, false)
	if _, packed := e.attrs[AttrHeaders]; packed || len(e.attrs) != 10 {
		t.Errorf("7 headers + id, published-at, key: %d attributes, packed %v; want 10 attributes, none packed", len(e.attrs), packed)
	}
	h["h7"] = "v"
	e = encode(m, false)
	if _, packed := e.attrs[AttrHeaders]; !packed || len(e.attrs) != 10 {
		t.Errorf("8 headers: %d attributes, packed %v; want 10 with a pack", len(e.attrs), packed)
	}
	if _, own := e.attrs["h0"]; !own {
		t.Error("the first headers by name should keep attributes of their own")
	}
}

// A message from another producer: the SQS MessageId is its ID, the
// MessageGroupId its key, every attribute a header.
func TestDecodeForeignMessage(t *testing.T) {
	got, err := decode(types.Message{
		MessageId:  aws.String("abc"),
		Body:       aws.String("hi"),
		Attributes: map[string]string{"ApproximateReceiveCount": "2", "SentTimestamp": "1700000000123", "MessageGroupId": "g"},
		MessageAttributes: map[string]types.MessageAttributeValue{
			"n": {DataType: aws.String("Number.int"), StringValue: aws.String("7")},
			"b": {DataType: aws.String("Binary"), BinaryValue: []byte{1, 2}},
		},
	}, "t")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != "abc" || got.Key != "g" || string(got.Payload) != "hi" || got.Attempt != 2 || !got.PublishedAt.Equal(time.UnixMilli(1700000000123)) ||
		got.Headers["n"] != "7" || got.Headers["b"] != "\x01\x02" || len(got.Headers) != 2 {
		t.Errorf("decoded %+v", got)
	}
}

func TestDecodeKeepsTheRawBodyWhenItDoesNotDecode(t *testing.T) {
	got, err := decode(types.Message{Body: aws.String("!!not base64"), MessageAttributes: map[string]types.MessageAttributeValue{
		AttrEncoding: {DataType: aws.String("String"), StringValue: aws.String("base64")},
	}}, "t")
	if err == nil || string(got.Payload) != "!!not base64" {
		t.Errorf("decode = %q, %v; want the raw body and an error", got.Payload, err)
	}
}

func TestFIFOIDs(t *testing.T) {
	for in, want := range map[string]string{
		"order-1":                 "order-1",
		"with space":              "~d2l0aCBzcGFjZQ",
		strings.Repeat("a", 128):  strings.Repeat("a", 128),
		strings.Repeat("a", 129):  "~" + hashString(strings.Repeat("a", 129)),
		strings.Repeat("é", 40):   "~" + base64.RawURLEncoding.EncodeToString([]byte(strings.Repeat("é", 40))),
		strings.Repeat("ü", 200):  "~" + hashString(strings.Repeat("ü", 200)),
		"tab\there":               "~dGFiCWhlcmU",
		"ascii-punct!#$%&()*+,./": "ascii-punct!#$%&()*+,./",
	} {
		got := fifoID(in)
		if got != want || len(got) > 128 {
			t.Errorf("fifoID(%.20q) = %q, want %q", in, got, want)
		}
	}
}

func TestNames(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{QueueName("orders", false), "orders"},
		{QueueName("orders.dlq", false), "orders_dlq"},
		{QueueName("orders", true), "orders.fifo"},
		{QueueName("orders.fifo", false), "orders.fifo"},
		{QueueName("https://sqs.eu-west-1.amazonaws.com/1/q", false), "https://sqs.eu-west-1.amazonaws.com/1/q"},
		{GroupQueueName("orders", "billing", false), "orders-billing"},
		{GroupQueueName("orders", "billing", true), "orders-billing.fifo"},
		{GroupQueueName("arn:aws:sns:eu-west-1:1:orders", "b", false), "orders-b"},
		{TopicName("orders.v2", true), "orders_v2.fifo"},
		{TopicName("arn:aws:sns:eu-west-1:1:orders", false), "arn:aws:sns:eu-west-1:1:orders"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	long := QueueName(strings.Repeat("x", 100), true)
	if len(long) != maxQueueName || !strings.HasSuffix(long, ".fifo") || long == QueueName(strings.Repeat("x", 101), true) {
		t.Errorf("long name %q (%d): want %d characters ending .fifo, distinct per input", long, len(long), maxQueueName)
	}
}

// FuzzCodec checks that anything a producer can put in a message survives
// the trip through SQS attributes and body.
func FuzzCodec(f *testing.F) {
	f.Add([]byte("payload"), "key", "name", "value", false)
	f.Add([]byte{0, 0xff}, "", "", "", true)
	f.Add([]byte("x"), "k\x00", "AWS.x", "\xff", false)
	f.Fuzz(func(t *testing.T, payload []byte, key, hname, hval string, fifo bool) {
		m := &broker.Message{Key: key, Payload: payload, Headers: map[string]string{hname: hval, "fixed": "1"}}
		if payload == nil {
			m.Payload = []byte{}
		}
		if fieldAttr(hname) {
			delete(m.Headers, hname) // reserved names are not headers
		}
		roundTrip(t, m, fifo)
	})
}
