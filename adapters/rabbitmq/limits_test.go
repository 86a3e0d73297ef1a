package rabbitmq

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Issue 17, item 2: a message whose headers do not fit one AMQP header frame
// made RabbitMQ close the shared publishing connection (FRAME_ERROR
// frame_too_large), failing unrelated publishes, and the error was
// Transient, so a retrying caller broke it again. Such messages are refused
// before any I/O, as InvalidArgument, and the connection carries on.
func TestOversizeHeadersRefusedWithoutBreakingTheConnection(t *testing.T) {
	b := openBroker(t, "", Options{})
	topic := uniq("headers")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic})
	bad, other := newPub(t, b), newPub(t, b)
	var connBefore *amqp.Connection
	if !b.As(&connBefore) {
		t.Fatal("As(*amqp.Connection) = false")
	}

	// An unrelated publisher keeps publishing on the same connection.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var otherErrs []error
	otherSent := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			err := other.Publish(ctxT(t, 10*time.Second), topic, &broker.Message{ID: fmt.Sprintf("other-%d", i)})
			mu.Lock()
			if err != nil {
				otherErrs = append(otherErrs, err)
			} else {
				otherSent++
			}
			mu.Unlock()
		}
	}()

	many := make(map[string]string, 20000) // 160 KB, far under the size limit
	for i := range 20000 {
		many[fmt.Sprintf("h%05d", i)] = "v"
	}
	cases := map[string]*broker.Message{
		"20000 headers":      {Headers: many},
		"a 129-byte name":    {Headers: map[string]string{strings.Repeat("n", 129): "v"}},
		"a 256-byte ID":      {ID: strings.Repeat("i", 256)},
		"x-delivery-count":   {Headers: map[string]string{"x-delivery-count": "7"}},
		"queuekit-key":       {Headers: map[string]string{"queuekit-key": "k"}},
		"x-death":            {Headers: map[string]string{"x-death": "forged"}},
		"x-last-death-queue": {Headers: map[string]string{"x-last-death-queue": "q"}},
	}
	for name, m := range cases {
		for try := 1; try <= 2; try++ { // a retrying caller gets the same answer
			err := bad.Publish(ctxT(t, 10*time.Second), topic, m)
			if broker.KindOf(err) != semantics.InvalidArgument {
				t.Errorf("Publish of a message with %s (try %d) = %v (kind %v), want InvalidArgument", name, try, err, broker.KindOf(err))
			}
		}
	}
	close(stop)
	wg.Wait()
	// And a few more after the refusals: each is a round trip on the
	// connection that a bad frame would have closed.
	for i := range 5 {
		if err := other.Publish(ctxT(t, 10*time.Second), topic, &broker.Message{ID: fmt.Sprintf("after-%d", i)}); err != nil {
			otherErrs = append(otherErrs, err)
		}
	}
	if len(otherErrs) > 0 {
		t.Errorf("the unrelated publisher failed %d time(s) (%d succeeded), first: %v", len(otherErrs), otherSent, otherErrs[0])
	}
	var connAfter *amqp.Connection
	if !b.As(&connAfter) || connAfter != connBefore || connAfter.IsClosed() {
		t.Errorf("the publishing connection was replaced or closed (before %p, after %p)", connBefore, connAfter)
	}
	// The refused publisher itself is usable, and a message with large
	// headers that fit goes through whole.
	fits := make(map[string]string, 1000)
	for i := range 1000 {
		fits[fmt.Sprintf("h%04d", i)] = strings.Repeat("v", 100)
	}
	if err := bad.Publish(ctxT(t, 10*time.Second), topic, &broker.Message{ID: "fits", Headers: fits}); err != nil {
		t.Fatalf("Publish with 1000 headers of 100 bytes (~110 KB, fits): %v", err)
	}
	for {
		d := receive(t, sub, 10*time.Second)
		_ = d.Ack(ctxT(t, 5*time.Second))
		if m := d.Message(); m.ID == "fits" {
			if len(m.Headers) != len(fits) || m.Headers["h0999"] != fits["h0999"] {
				t.Errorf("received %d headers, want %d", len(m.Headers), len(fits))
			}
			break
		}
	}
}

// Issue 17, item 3: a topic over 255 bytes or with invalid UTF-8 made
// amqp091 or RabbitMQ close the shared consuming connection, so another
// subscriber's Ack failed and its message came back. Names are checked
// against RabbitMQ's rules before any I/O, as InvalidArgument.
func TestBadNamesRefusedWithoutBreakingTheConnection(t *testing.T) {
	b := openBroker(t, "", Options{})
	rb := rabbit(t, b)
	topic := uniq("names")
	sub := newSub(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})
	pub := newPub(t, b)
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "held"}); err != nil {
		t.Fatal(err)
	}
	held := receive(t, sub, 5*time.Second) // unacked while the bad names are tried
	var subConn *amqp.Connection
	if !sub.As(&subConn) {
		t.Fatal("subscriber As(*amqp.Connection) = false")
	}

	long := strings.Repeat("t", 256)
	ctx := ctxT(t, 30*time.Second)
	subscribe := func(o broker.SubscriberOptions) func() error {
		return func() error {
			s, err := b.NewSubscriber(ctx, o)
			if err == nil {
				_ = s.Close(ctx)
			}
			return err
		}
	}
	// Through the driver directly, which package broker's own checks
	// (UTF-8, control characters) do not cover.
	driverSubscribe := func(o broker.SubscriberOptions) func() error {
		return func() error {
			if o.Group == "" {
				o.Group = "default"
			}
			s, err := rb.NewSubscriber(ctx, o)
			if err == nil {
				_ = s.Close(ctx)
			}
			return err
		}
	}
	for name, try := range map[string]func() error{
		"NewSubscriber, 256-byte topic":          subscribe(broker.SubscriberOptions{Topic: long}),
		"NewSubscriber, 300-byte topic":          subscribe(broker.SubscriberOptions{Topic: strings.Repeat("x", 300)}),
		"NewSubscriber, queue over 233 bytes":    subscribe(broker.SubscriberOptions{Topic: strings.Repeat("t", 200), Group: strings.Repeat("g", 40)}),
		"NewSubscriber, 256-byte group":          subscribe(broker.SubscriberOptions{Topic: topic, Group: long}),
		"NewSubscriber, long dead-letter topic":  subscribe(broker.SubscriberOptions{Topic: topic, Group: "g2", MaxAttempts: 3, DeadLetterTopic: long}),
		"NewSubscriber, long dead-letter queue":  subscribe(broker.SubscriberOptions{Topic: strings.Repeat("d", 229), Group: "g", MaxAttempts: 3}),
		"NewSubscriber, delay marker in group":   subscribe(broker.SubscriberOptions{Topic: topic, Group: "x.qk-delay-5ms"}),
		"NewSubscriber, registry name as group":  subscribe(broker.SubscriberOptions{Topic: topic, Group: "qk-topology"}),
		"NewSubscriber, lock name as group":      subscribe(broker.SubscriberOptions{Topic: topic, Group: "qk-active"}),
		"driver NewSubscriber, invalid UTF-8":    driverSubscribe(broker.SubscriberOptions{Topic: "bad\xffutf8"}),
		"driver NewSubscriber, UTF-8 group":      driverSubscribe(broker.SubscriberOptions{Topic: topic, Group: "\xc3"}),
		"driver NewSubscriber, dead-letter UTF8": driverSubscribe(broker.SubscriberOptions{Topic: topic, MaxAttempts: 2, DeadLetterTopic: "d\xff"}),
		"Declare, 256-byte topic":                func() error { return b.Declare(ctx, long, "g") },
		"Declare, queue over 233 bytes":          func() error { return b.Declare(ctx, strings.Repeat("t", 232), "g") },
		"driver Declare, invalid UTF-8":          func() error { return rb.Declare(ctx, "bad\xff", []string{"g"}) },
		"Publish, 256-byte topic":                func() error { return pub.Publish(ctx, long, &broker.Message{}) },
		"driver Publish, invalid UTF-8": func() error {
			p, err := rb.NewPublisher(ctx)
			if err != nil {
				return fmt.Errorf("NewPublisher: %w", err)
			}
			defer p.Close(ctx)
			return p.Publish(ctx, "bad\xff", &broker.Message{ID: "x"})
		},
	} {
		if err := try(); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s = %v (kind %v), want InvalidArgument", name, err, broker.KindOf(err))
		}
	}
	// The other subscriber never noticed: its Ack works on the same
	// connection, so the message does not come back.
	if err := held.Ack(ctxT(t, 5*time.Second)); err != nil {
		t.Errorf("Ack of the other subscriber's delivery after the bad names: %v", err)
	}
	var after *amqp.Connection
	if !sub.As(&after) || after != subConn || after.IsClosed() {
		t.Errorf("the consuming connection was replaced or closed (before %p, after %p)", subConn, after)
	}
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "next"}); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, sub, 5*time.Second).Message(); m.ID != "next" {
		t.Errorf("after the bad names the subscriber received %q, want next (held must not come back)", m.ID)
	}
	// A Nack delay beyond RabbitMQ's longest TTL is refused before any
	// I/O, and the delivery stays unsettled.
	if err := pub.Publish(ctxT(t, 5*time.Second), topic, &broker.Message{ID: "late"}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, sub, 5*time.Second)
	if err := d.Nack(ctxT(t, 5*time.Second), maxDelay+time.Second); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("Nack(%v) = %v, want InvalidArgument", maxDelay+time.Second, err)
	}
	if err := d.Ack(ctxT(t, 5*time.Second)); err != nil {
		t.Errorf("Ack after the refused Nack: %v", err)
	}
}

// Issue 17, item 6: an out-of-range URL value (port 99999) was reported as
// Transient by the dial that followed. Every parameter, the host and the
// port are checked first, as InvalidArgument, and no dial happens.
func TestURLValuesOutOfRange(t *testing.T) {
	long := strings.Repeat("x", 256)
	for _, tc := range []struct{ url, want string }{
		{"amqp://guest:guest@127.0.0.1:99999/", "port 99999"},
		{"amqp://guest:guest@127.0.0.1:65536/", "port 65536"},
		{"amqp://guest:guest@127.0.0.1:0/", "port 0"},
		{"amqp://guest:guest@127.0.0.1:-1/", "malformed URL"},
		{"amqp://guest:guest@127.0.0.1:port/", "malformed URL"},
		{"amqp://guest:guest@" + strings.Repeat("h", 254) + ":5672/", "host name"},
		{"amqp://guest:guest@127.0.0.1/" + long, "vhost"},
		{"amqp://127.0.0.1/?prefetch=-1", "prefetch=-1"},
		{"amqp://127.0.0.1/?prefetch=65536", "prefetch=65536"},
		{"amqp://127.0.0.1/?confirm_window=-1", "confirm_window=-1"},
		{"amqp://127.0.0.1/?confirm_window=65536", "confirm_window=65536"},
		{"amqp://127.0.0.1/?confirm_window=many", "confirm_window"},
		{"amqp://127.0.0.1/?max_message_size=-1", "max_message_size=-1"},
		{"amqp://127.0.0.1/?max_message_size=536870913", "max_message_size=536870913"},
		{"amqp://127.0.0.1/?heartbeat=-1s", "heartbeat"},
		{"amqp://127.0.0.1/?heartbeat=500ms", "heartbeat"},
		{"amqp://127.0.0.1/?heartbeat=65536s", "heartbeat"},
		{"amqp://127.0.0.1/?heartbeat=10", "heartbeat"},
		{"amqp://127.0.0.1/?connect_timeout=0s", "connect_timeout"},
		{"amqp://127.0.0.1/?connect_timeout=-1s", "connect_timeout"},
		{"amqp://127.0.0.1/?reconnect_max_wait=-1s", "reconnect_max_wait"},
		{"amqp://127.0.0.1/?exchange=" + long, "exchange"},
		{"amqp://127.0.0.1/?exchange=%FF", "exchange"},
		{"amqp://127.0.0.1/?exchange_type=fanout", "exchange_type"},
		{"amqp://127.0.0.1/?queue_type=stream", "queue_type"},
		{"amqp://127.0.0.1/?passive=maybe", "passive"},
		{"amqp://127.0.0.1/?mandatory=false", "mandatory=false"},
		{"amqp://127.0.0.1/?mandatory=sure", "mandatory"},
		{"amqp://127.0.0.1/?connection_name=" + strings.Repeat("n", 1025), "connection_name"},
		{"amqp://127.0.0.1/?cacertfile=/ca.pem", "amqps"},
		{"amqps://127.0.0.1/?certfile=/c.pem", "certfile and keyfile"},
	} {
		start := time.Now()
		_, err := Dial(context.Background(), tc.url, Options{})
		if broker.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Dial(%.80s) = %v (kind %v), want InvalidArgument mentioning %q", tc.url, err, broker.KindOf(err), tc.want)
		}
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("Dial(%.80s) took %v: it dialled instead of refusing the URL", tc.url, elapsed)
		}
	}
	// The bounds themselves are valid.
	for _, ok := range []string{
		"amqp://127.0.0.1:65535/?prefetch=65535&confirm_window=65535&max_message_size=536870912&heartbeat=65535s",
		"amqp://127.0.0.1:1/?prefetch=0&confirm_window=0&max_message_size=0&heartbeat=0s&reconnect_max_wait=0s",
		"amqp://127.0.0.1/?heartbeat=1s&mandatory=true&exchange=" + strings.Repeat("x", 255),
		"amqp://127.0.0.1/" + strings.Repeat("v", 255),
	} {
		if _, err := parseURL(ok, Options{}); err != nil {
			t.Errorf("parseURL(%.80s) = %v, want nil", ok, err)
		}
	}
	// Options get the same checks.
	for name, o := range map[string]Options{
		"Exchange":      {Exchange: long},
		"Prefetch":      {Prefetch: 65536},
		"ConfirmWindow": {ConfirmWindow: MaxConfirmWindow + 1},
		"MaxMessage":    {MaxMessageSize: MaxMessageSizeLimit + 1},
	} {
		if _, err := o.withDefaults(); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Options with an out-of-range %s: %v, want InvalidArgument", name, err)
		}
	}
}
