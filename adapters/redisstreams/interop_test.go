package redisstreams_test

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// redisCLI runs redis-cli against the test server with args, stdin as its
// input, and returns its standard output. It skips the test (fails under
// CI=true) when redis-cli is not installed.
func redisCLI(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	path, err := exec.LookPath("redis-cli")
	if err != nil {
		testenv.Unavailable(t, "redis-cli", err, "install it with `apt-get install redis-tools`")
	}
	host, port, _ := net.SplitHostPort(testenv.Redis(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"-h", host, "-p", port, "-e"}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("redis-cli %s: %v: %s %s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// quoted returns the double-quoted strings of redis-cli's formatted
// (--no-raw) output, unescaped: every bulk string of the reply, in order.
func quoted(t *testing.T, out []byte) [][]byte {
	t.Helper()
	var strs [][]byte
	for i := 0; i < len(out); i++ {
		if out[i] != '"' {
			continue
		}
		var s []byte
		for i++; i < len(out) && out[i] != '"'; i++ {
			c := out[i]
			if c != '\\' {
				s = append(s, c)
				continue
			}
			i++
			switch out[i] {
			case 'n':
				s = append(s, '\n')
			case 'r':
				s = append(s, '\r')
			case 't':
				s = append(s, '\t')
			case 'a':
				s = append(s, '\a')
			case 'b':
				s = append(s, '\b')
			case 'x':
				v, err := strconv.ParseUint(string(out[i+1:i+3]), 16, 8)
				if err != nil {
					t.Fatalf("bad escape in %q", out)
				}
				s = append(s, byte(v))
				i += 2
			default: // \\ and \"
				s = append(s, out[i])
			}
		}
		strs = append(strs, s)
	}
	return strs
}

// binary is a payload of every byte value, newlines and quotes included.
func binary() []byte {
	p := make([]byte, 0, 300)
	for i := range 256 {
		p = append(p, byte(i))
	}
	return append(p, "\"\\\r\n end"...)
}

// What redis-cli XADDs — with queuekit's fields, binary-safe from stdin,
// and plain fields of another producer — is consumed intact, including an
// entry added before the stream had any group.
func TestInteropRedisCLIWrites(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("cli-in")
	st := stream(topic)
	early := strings.TrimSpace(string(redisCLI(t, nil, "XADD", st, "*", "event", "created", "user", "42")))
	s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	payload := binary()
	redisCLI(t, payload, "-x", "XADD", st, "*", "_id", "cli-1", "_key", "k1", "h:trace", "abc", "h:ünï", "ödé",
		"h:queuekit-id", "spoofed", "queuekit-attempt", "99", "_body")

	d := receive(t, ctx, s)
	m := d.Message()
	ms, _ := strconv.ParseInt(strings.Split(early, "-")[0], 10, 64)
	if m.ID != st+"/"+early || len(m.Payload) != 0 || m.Header("event") != "created" || m.Header("user") != "42" ||
		m.Attempt != 1 || m.Topic != topic || !m.PublishedAt.Equal(time.UnixMilli(ms)) {
		t.Errorf("the entry of another producer = %+v; want ID %s/%s, headers event and user, PublishedAt from the entry ID", m, st, early)
	}
	_ = d.Ack(ctx)

	d = receive(t, ctx, s)
	m = d.Message()
	if m.ID != "cli-1" || m.Key != "k1" || !bytes.Equal(m.Payload, payload) || m.Attempt != 1 {
		t.Errorf("redis-cli's entry = ID %q key %q attempt %d payload %q; want cli-1, k1, 1, %q", m.ID, m.Key, m.Attempt, m.Payload, payload)
	}
	want := map[string]string{"trace": "abc", "ünï": "ödé"}
	if len(m.Headers) != len(want) || m.Header("trace") != "abc" || m.Header("ünï") != "ödé" {
		t.Errorf("headers = %v, want %v (queuekit-id and queuekit-attempt of a producer are dropped)", m.Headers, want)
	}
	_ = d.Ack(ctx)
}

// What queuekit publishes is read intact by redis-cli, with XRANGE and
// with XREADGROUP in a group of its own, and redis-cli's XACK settles it
// for that group.
func TestInteropRedisCLIReads(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t)
	topic := name("cli-out")
	st := stream(topic)
	if err := b.Declare(ctx, topic, "cli"); err != nil {
		t.Fatal(err)
	}
	m := &broker.Message{Key: "order-7", Payload: binary(),
		Headers: map[string]string{"content-type": "application/octet-stream", "ünïcode": "välue\nline", "empty": ""}}
	if err := newPublisher(t, b).Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	check := func(what string, fields [][]byte) {
		t.Helper()
		got := map[string][]byte{}
		for i := 0; i+1 < len(fields); i += 2 {
			got[string(fields[i])] = fields[i+1]
		}
		want := map[string][]byte{
			"_id": []byte(m.ID), "_key": []byte("order-7"), "_at": []byte(strconv.FormatInt(m.PublishedAt.UnixNano(), 10)),
			"h:content-type": []byte("application/octet-stream"), "h:ünïcode": []byte("välue\nline"), "h:empty": {},
			"_body": binary(),
		}
		if len(got) != len(want) {
			t.Errorf("%s: fields %q, want %q", what, got, want)
		}
		for k, v := range want {
			if g, ok := got[k]; !ok || !bytes.Equal(g, v) {
				t.Errorf("%s: field %s = %q, want %q", what, k, g, v)
			}
		}
	}
	r := quoted(t, redisCLI(t, nil, "--no-raw", "XRANGE", st, "-", "+"))
	if len(r) < 1 {
		t.Fatalf("XRANGE returned nothing")
	}
	id := string(r[0])
	check("XRANGE", r[1:])
	r = quoted(t, redisCLI(t, nil, "--no-raw", "XREADGROUP", "GROUP", "cli", "cli-consumer", "COUNT", "10", "STREAMS", st, ">"))
	if len(r) < 2 || string(r[0]) != st || string(r[1]) != id {
		t.Fatalf("XREADGROUP = %q, want stream %s, entry %s", r, st, id)
	}
	check("XREADGROUP", r[2:])
	if bl, err := b.Backlog(ctx, topic, "cli"); err != nil || bl.InFlight != 1 || bl.Pending != 0 {
		t.Errorf("Backlog after redis-cli's XREADGROUP = %+v, %v; want 1 in flight", bl, err)
	}
	if out := strings.TrimSpace(string(redisCLI(t, nil, "XACK", st, "cli", id))); out != "1" {
		t.Errorf("XACK = %s, want 1", out)
	}
	if bl, err := b.Backlog(ctx, topic, "cli"); err != nil || bl.InFlight != 0 || bl.Pending != 0 {
		t.Errorf("Backlog after redis-cli's XACK = %+v, %v; want nothing left", bl, err)
	}
}
