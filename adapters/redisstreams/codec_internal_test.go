package redisstreams

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker/driver"
)

// The values encode boxes in place are ordinary strings to whoever reads
// them (go-redis's writer switches on the type; hooks may format them),
// after a collection too; and encoding a message allocates nothing once
// the call's buffers are made.
func TestEncodeBoxesInPlace(t *testing.T) {
	m := &driver.Message{ID: "id-1", Key: "k", Payload: []byte("pay\x00load"),
		Headers: map[string]string{"a": "1"}, PublishedAt: time.Unix(0, 1234567890123456789)}
	strs := make([]string, 0, strCount(m))
	at := make([]byte, 0, 20)
	v, strs, _ := encode(make([]any, 0, fieldCount(m)), strs, at, m)
	if len(v) != fieldCount(m) || len(strs) != strCount(m) {
		t.Fatalf("%d values, %d strings; want %d, %d", len(v), len(strs), fieldCount(m), strCount(m))
	}
	runtime.GC()
	var got []string
	for _, x := range v {
		s, ok := x.(string)
		if !ok {
			t.Fatalf("value %#v is a %T; want a string", x, x)
		}
		got = append(got, s)
	}
	want := "_id|id-1|_key|k|_at|1234567890123456789|h:a|1|_body|pay\x00load"
	if strings.Join(got, "|") != want || fmt.Sprint(v[1]) != "id-1" || v[1] != any("id-1") {
		t.Errorf("values %q; want %q", got, want)
	}

	msgs := make([]*driver.Message, 100)
	for i := range msgs {
		msgs[i] = &driver.Message{ID: driver.NewID(), Payload: make([]byte, 256), Headers: map[string]string{"content-type": "x"}}
	}
	v = make([]any, 0, len(msgs)*fieldCount(msgs[0]))
	strs = make([]string, 0, len(msgs)*strCount(msgs[0]))
	at = make([]byte, 0, 20*len(msgs))
	allocs := testing.AllocsPerRun(10, func() {
		v, strs, at = v[:0], strs[:0], at[:0]
		for _, m := range msgs {
			v, strs, at = encode(v, strs, at, m)
		}
	})
	if allocs != 0 {
		t.Errorf("encoding 100 messages allocated %v times; want 0", allocs)
	}
}

// parseNanos agrees with strconv.ParseInt.
func TestParseNanos(t *testing.T) {
	for _, s := range []string{"0", "1", "-1", "1234567890123456789", "-1234567890123456789", "123456789012345678",
		"9223372036854775807", "-9223372036854775808", "9223372036854775808", "-9223372036854775809", "9999999999999999999", "1765000000000000000", "", "-", "+5", "12a", " 1", "00012"} {
		n, ok := parseNanos(s)
		want, err := strconv.ParseInt(s, 10, 64)
		if ok != (err == nil) || (ok && n != want) {
			t.Errorf("parseNanos(%q) = %d, %v; ParseInt: %d, %v", s, n, ok, want, err)
		}
	}
}
