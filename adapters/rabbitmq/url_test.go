package rabbitmq

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

func TestURLParameters(t *testing.T) {
	cfg, err := parseURL("amqps://u:p@h:1234/v%2Fx?exchange=ex&exchange_type=topic&queue_type=classic&prefetch=7&confirm_window=9&passive=1&mandatory=true&max_message_size=100&connection_name=app&registry=false&heartbeat=3s&connect_timeout=2s&reconnect_max_wait=1s&server_name_indication=sni", Options{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.opts
	if o.Exchange != "ex" || o.ExchangeType != "topic" || o.QueueType != Classic || o.Prefetch != 7 || o.ConfirmWindow != 9 ||
		!o.Passive || o.MaxMessageSize != 100 || o.ConnectionName != "app" || !o.NoRegistry || o.ReconnectMaxWait != time.Second {
		t.Errorf("options = %+v", o)
	}
	if cfg.uri.Host != "h" || cfg.uri.Port != 1234 || cfg.amqp.Vhost != "v/x" || cfg.amqp.Heartbeat != 3*time.Second ||
		cfg.timeout != 2*time.Second || cfg.amqp.TLSClientConfig == nil || cfg.amqp.TLSClientConfig.ServerName != "sni" {
		t.Errorf("connection config = %+v %+v timeout %v", cfg.uri, cfg.amqp, cfg.timeout)
	}
	if strings.Contains(cfg.redacted, ":p@") {
		t.Errorf("redacted URL %q shows the password", cfg.redacted)
	}
	def, err := parseURL("amqp://127.0.0.1", Options{})
	if err != nil || def.amqp.Vhost != "/" || def.uri.Port != 5672 {
		t.Errorf("defaults: %+v, %v", def, err)
	}
}

func TestURLErrors(t *testing.T) {
	for url, want := range map[string]string{
		"amqp://h/?prefech=1":                 "unknown URL parameter(s) prefech (valid: cacertfile, certfile, confirm_window,",
		"amqp://h/?prefetch=lots":             `prefetch="lots" is not an integer`,
		"amqp://h/?prefetch=70000":            "prefetch=70000 is out of range",
		"amqp://h/?exchange_type=fanout":      `exchange_type="fanout" is not one of direct, topic`,
		"amqp://h/?queue_type=stream":         `queue_type="stream" is not one of quorum, classic`,
		"amqp://h/?cacertfile=/x.pem":         "need an amqps:// URL",
		"amqps://h/?certfile=/c.pem":          "certfile and keyfile go together",
		"amqps://h/?cacertfile=/nonexistent":  "cacertfile",
		"amqp://h/?connect_timeout=0s":        "connect_timeout",
		"kafka://h/":                          "scheme must be amqp or amqps",
		"amqp://user:s3cret@h/?mandatory=bad": `mandatory="bad" is not a boolean`,
	} {
		_, err := Dial(context.Background(), url, Options{})
		if err == nil || !strings.Contains(err.Error(), want) || broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Dial(%s) = %v, want an invalid argument error containing %q", url, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Dial(%s) error shows the password: %v", url, err)
		}
	}
}

func TestDialFailsClearlyAndFast(t *testing.T) {
	// Refused: nothing listens.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(context.Background(), "amqp://guest:s3cret@"+addr+"/", Options{})
	if err == nil || broker.KindOf(err) != semantics.Transient || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Dial to a closed port = %v, want a transient error without the password", err)
	}

	// A server that accepts and never answers: bounded by connect_timeout.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	_, err = Dial(context.Background(), "amqp://guest:s3cret@"+mute.Addr().String()+"/?connect_timeout=300ms", Options{})
	if err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("Dial to a mute server = %v after %v, want an error within connect_timeout", err, time.Since(start))
	}
	// And by ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err = Dial(ctx, "amqp://guest:guest@"+mute.Addr().String()+"/", Options{}); err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("Dial with a 200ms ctx = %v after %v", err, time.Since(start))
	}
}

func TestWrongPasswordIsPermanentAndRedacted(t *testing.T) {
	url := testenv.RabbitMQ(t)
	bad := strings.Replace(url, "guest:guest@", "guest:wr0ngpass@", 1)
	if bad == url {
		t.Skip("QUEUEKIT_AMQP_URL does not use guest:guest")
	}
	_, err := broker.Open(ctxT(t, 10*time.Second), bad)
	if err == nil || strings.Contains(err.Error(), "wr0ngpass") {
		t.Fatalf("Open with a wrong password = %v, want an error without the password", err)
	}
	if broker.KindOf(err) != semantics.Permanent {
		t.Errorf("wrong password: kind %v (%v), want permanent", broker.KindOf(err), err)
	}
}

func TestOpenRegistersSchemes(t *testing.T) {
	url := testenv.RabbitMQ(t)
	b, err := broker.Open(ctxT(t, 10*time.Second), url+"?prefetch=10")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	var rb *Broker
	if !b.As(&rb) || rb.opts.Prefetch != 10 {
		t.Errorf("Open returned %v, whose driver is %+v", b, rb)
	}
}

func TestNewUsesAnExistingConnection(t *testing.T) {
	url := testenv.RabbitMQ(t)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &cleanup{}
	t.Cleanup(func() { c.run(t, url) })
	rb, err := New(conn, Options{OnDeclare: c.add})
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(rb)
	topic := uniq("new")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic})
	if err := newPub(t, b).Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "n"}); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, sub, 5*time.Second).Message(); m.ID != "n" {
		t.Errorf("got %q", m.ID)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if conn.IsClosed() {
		t.Error("Broker.Close closed the connection given to New")
	}
	if _, err := b.NewPublisher(context.Background()); broker.KindOf(err) != semantics.Closed {
		t.Errorf("NewPublisher after Close = %v, want ErrClosed", err)
	}
	if _, err := New(nil, Options{}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("New(nil) = %v", err)
	}
}

// Messages published by other AMQP clients: no message ID, headers of any
// AMQP type.
func TestForeignMessages(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("foreign")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic})
	conn, err := amqp.Dial(testenv.RabbitMQ(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	err = ch.PublishWithContext(ctxT(t, 5*time.Second), DefaultExchange, topic, false, false, amqp.Publishing{
		Body:    []byte("raw"),
		Headers: amqp.Table{"n": int32(42), "ok": true, "b": []byte("bytes"), "s": "str"},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := receive(t, sub, 5*time.Second).Message()
	want := map[string]string{"n": "42", "ok": "true", "b": "bytes", "s": "str"}
	if string(m.Payload) != "raw" || m.ID != "" || m.Key != "" || len(m.Headers) != len(want) {
		t.Fatalf("foreign message = %+v", m)
	}
	for k, v := range want {
		if m.Headers[k] != v {
			t.Errorf("header %s = %q, want %q", k, m.Headers[k], v)
		}
	}
}
