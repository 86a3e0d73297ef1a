package kafka

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

func TestParseURL(t *testing.T) {
	u, _ := url.Parse("kafka://b,a:9093/?partitions=6&replication=2&group=billing&start=latest&nack=retry-topic" +
		"&commit=ack&commit_interval=250ms&isolation=read_uncommitted&drain_timeout=3s&prefetch=64" +
		"&max_message_bytes=2048&linger=5ms&compression=zstd&session_timeout=10s&dial_timeout=2s&create_topics=false&client_id=me")
	o, err := ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	want := Options{Brokers: []string{"b:9092", "a:9093"}, Partitions: 6, ReplicationFactor: 2, Group: "billing",
		StartOffset: Latest, Nack: NackRetryTopic, CommitOnAck: true, CommitInterval: 250 * time.Millisecond,
		ReadUncommitted: true, DrainTimeout: 3 * time.Second, Prefetch: 64, MaxMessageBytes: 2048,
		Linger: 5 * time.Millisecond, SessionTimeout: 10 * time.Second, DialTimeout: 2 * time.Second, ManualTopics: true}
	if strings.Join(o.Brokers, ",") != strings.Join(want.Brokers, ",") || o.Partitions != want.Partitions ||
		o.ReplicationFactor != want.ReplicationFactor || o.Group != want.Group || o.StartOffset != want.StartOffset ||
		o.Nack != want.Nack || !o.CommitOnAck || o.CommitInterval != want.CommitInterval || !o.ReadUncommitted ||
		o.DrainTimeout != want.DrainTimeout || o.Prefetch != want.Prefetch || o.MaxMessageBytes != want.MaxMessageBytes ||
		o.Linger != want.Linger || o.SessionTimeout != want.SessionTimeout || o.DialTimeout != want.DialTimeout ||
		!o.ManualTopics || o.Compression == nil || len(o.ClientOptions) != 1 {
		t.Errorf("ParseURL = %+v\nwant %+v", o, want)
	}
}

func TestParseURLRejectsBadInput(t *testing.T) {
	for raw, wantIn := range map[string]string{
		"kafka://h:1/?bogus=1&topic=x":              "unknown URL parameter(s) bogus, topic (valid: ",
		"kafka://h:1/?start=middle":                 "start=",
		"kafka://h:1/?nack=drop":                    "nack=",
		"kafka://h:1/?commit=never":                 "commit=",
		"kafka://h:1/?partitions=0":                 "partitions=0 is out of range",
		"kafka://h:1/?prefetch=x":                   "not an integer",
		"kafka://h:1/?linger=soon":                  "not a duration",
		"kafka://h:1/?compression=brotli":           "compression=",
		"kafka://h:1/orders":                        "no path",
		"kafka:///":                                 "no broker",
		"kafka://user:s3cret@h:1/":                  "sasl=",
		"kafka://user:s3cret@h:1/?sasl=kerberos":    "sasl=",
		"kafka://h:1/?sasl=plain":                   "user:password@",
		"kafka://h:1/?tls_ca=/nonexistent/ca.pem":   "/nonexistent/ca.pem",
		"kafka://h:1/?tls_cert=/tmp/c.pem":          "tls_cert and tls_key go together",
		"kafka://user:s3cret@h:1/?sasl=plain&bad=1": "bad",
	} {
		_, err := broker.Open(context.Background(), raw)
		if err == nil || !strings.Contains(err.Error(), wantIn) {
			t.Errorf("%s: err = %v, want it to mention %q", raw, err, wantIn)
			continue
		}
		if broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s: kind %v, want invalid argument", raw, broker.KindOf(err))
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the error shows the password: %v", raw, err)
		}
	}
}

func TestOpenFailsFastWhenNoBrokerAnswers(t *testing.T) {
	start := time.Now()
	_, err := broker.Open(context.Background(), "kafka://user:s3cret@127.0.0.1:1/?dial_timeout=500ms&sasl=plain")
	if err == nil {
		t.Fatal("Open succeeded with no broker")
	}
	if broker.KindOf(err) != semantics.Transient || !strings.Contains(err.Error(), "no Kafka broker at [127.0.0.1:1] accepted a connection") {
		t.Errorf("err = %v (kind %v), want a transient 'no Kafka broker ... accepted a connection'", err, broker.KindOf(err))
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("the error shows the password: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Open took %v, want about the 500ms dial timeout", d)
	}
}

func TestOpenByURL(t *testing.T) {
	seeds := testenv.Kafka(t)
	b, err := broker.Open(context.Background(), "kafka://"+strings.Join(seeds, ",")+"/?partitions=2")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	var kb *Broker
	if !b.As(&kb) {
		t.Fatal("Open did not give a *kafka.Broker")
	}
	topic := newTopic(t)
	if err := b.Declare(context.Background(), topic, "g"); err != nil {
		t.Fatal(err)
	}
	pub, _ := b.NewPublisher(context.Background())
	if err := pub.Publish(context.Background(), topic, &broker.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	lags, err := kb.Lag(context.Background(), topic, "nobody")
	if err != nil {
		t.Fatal(err)
	}
	if len(lags) != 2 {
		t.Errorf("topic created with %d partitions, want 2 (the URL's)", len(lags))
	}
}

func TestManualTopicsMakesMissingTopicsNotFound(t *testing.T) {
	b := testBroker(t, Options{ManualTopics: true})
	_, err := b.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: newTopic(t)})
	if broker.KindOf(err) != semantics.NotFound {
		t.Fatalf("err = %v (kind %v), want not found", err, broker.KindOf(err))
	}
}

// TestSASLFromURL authenticates with SCRAM credentials from the URL against
// a kfake cluster that requires them; a wrong password fails without being
// shown.
func TestSASLFromURL(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "app", "s3cret-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]
	ctx := testCtx(t, 20*time.Second)
	b, err := broker.Open(ctx, "kafka://app:s3cret-pw@"+addr+"/?sasl=scram-sha-256")
	if err != nil {
		t.Fatalf("Open with the right password: %v", err)
	}
	defer b.Close(ctx)
	topic := newTopic(t)
	if err := b.Declare(ctx, topic, "g"); err != nil {
		t.Fatalf("Declare over SASL: %v", err)
	}
	pub, _ := b.NewPublisher(ctx)
	if err := pub.Publish(ctx, topic, &broker.Message{Payload: []byte("x")}); err != nil {
		t.Fatalf("Publish over SASL: %v", err)
	}
	_, err = broker.Open(ctx, "kafka://app:wrong-pw@"+addr+"/?sasl=scram-sha-256&dial_timeout=3s")
	if err == nil {
		t.Fatal("Open with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("the error shows the password: %v", err)
	}
}

func TestManualTopicsPublishToMissingTopicIsNotFound(t *testing.T) {
	b := testBroker(t, Options{ManualTopics: true})
	pub, _ := b.NewPublisher(context.Background())
	err := pub.Publish(testCtx(t, 30*time.Second), newTopic(t), &broker.Message{Payload: []byte("x")})
	if broker.KindOf(err) != semantics.NotFound {
		t.Fatalf("err = %v (kind %v), want not found", err, broker.KindOf(err))
	}
}

// TestURLParameterRanges checks every URL parameter with values in and out
// of range: out-of-range ones (negative or zero durations where zero means
// nothing, counts below 1 or past what Kafka carries, unknown words) are
// InvalidArgument errors that name the parameter; a parameter added to
// urlParams without rows here fails the test.
func TestURLParameterRanges(t *testing.T) {
	type row struct {
		param string
		good  []string
		bad   []string
	}
	rows := []row{
		{"client_id", []string{"billing-7"}, nil},
		{"partitions", []string{"1", "12", "1048576"}, []string{"0", "-1", "x", "1048577"}},
		{"replication", []string{"-1", "1", "3"}, []string{"0", "-2", "16385", "x"}},
		{"create_topics", []string{"true", "false", "0"}, []string{"maybe"}},
		{"group", []string{"billing", "a.b_c-d"}, []string{strings.Repeat("g", 1<<15)}},
		{"start", []string{"earliest", "latest"}, []string{"middle", "EARLIEST"}},
		{"nack", []string{"pause", "retry-topic", "retry_topic"}, []string{"drop"}},
		{"commit", []string{"interval", "ack"}, []string{"never"}},
		{"commit_interval", []string{"250ms", "1m"}, []string{"-1s", "0", "0s", "soon"}},
		{"isolation", []string{"read_committed", "read_uncommitted"}, []string{"serializable"}},
		{"drain_timeout", []string{"3s"}, []string{"-3s", "0", "x"}},
		{"prefetch", []string{"1", "64", "2147483647"}, []string{"0", "-5", "2147483648", "x"}},
		{"max_message_bytes", []string{"1", "2048", "1073741824"}, []string{"0", "-1", "1073741825", "x"}},
		{"linger", []string{"0", "5ms"}, []string{"-1ms", "x"}},
		{"compression", []string{"none", "gzip", "snappy", "lz4", "zstd"}, []string{"brotli", ""}},
		{"session_timeout", []string{"10s", "30m"}, []string{"-10s", "0", "1000h", "x"}},
		{"dial_timeout", []string{"2s"}, []string{"-2s", "0", "x"}},
		{"tls", []string{"true", "false"}, []string{"yes please"}},
		{"tls_ca", nil, []string{"/nonexistent/ca.pem"}},
		{"tls_cert", nil, []string{"/tmp/c.pem"}}, // without tls_key
		{"tls_key", nil, []string{"/tmp/k.pem"}},  // without tls_cert
		{"tls_server_name", []string{"kafka.internal"}, nil},
		{"sasl", nil, []string{"plain", "kerberos"}}, // plain without credentials
	}
	covered := map[string]bool{}
	for _, r := range rows {
		covered[r.param] = true
		for _, v := range r.good {
			raw := "kafka://h:9092/?" + url.Values{r.param: {v}}.Encode()
			if _, err := ParseURL(mustParse(t, raw)); err != nil {
				t.Errorf("%s: %v", raw, err)
			}
		}
		for _, v := range r.bad {
			raw := "kafka://h:9092/?" + url.Values{r.param: {v}}.Encode()
			if v == "" {
				raw = "kafka://h:9092/?" + r.param + "=" // present but empty
			}
			_, err := ParseURL(mustParse(t, raw))
			if v == "" && r.param == "compression" {
				// An empty value is the default, like an absent one.
				if err != nil {
					t.Errorf("%s: %v", raw, err)
				}
				continue
			}
			if err == nil {
				t.Errorf("%.80s: accepted", raw)
				continue
			}
			if broker.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), r.param) {
				t.Errorf("%.80s: %.200v (kind %v), want an invalid argument error naming %s", raw, err, broker.KindOf(err), r.param)
			}
		}
	}
	for _, p := range urlParams {
		if !covered[p] {
			t.Errorf("URL parameter %s has no row in this test", p)
		}
	}
	for _, raw := range []string{"kafka://h:0/", "kafka://h:65536/", "kafka://h:99999/", "kafka://a:1,b:70000/"} {
		if _, err := ParseURL(mustParse(t, raw)); broker.KindOf(err) != semantics.InvalidArgument || !strings.Contains(err.Error(), "port") {
			t.Errorf("%s: %v, want an invalid argument error about the port", raw, err)
		}
	}
	for _, raw := range []string{"kafka://h/", "kafka://h:1/", "kafka://h:65535/", "kafka://[::1]:9092/"} {
		if _, err := ParseURL(mustParse(t, raw)); err != nil {
			t.Errorf("%s: %v", raw, err)
		}
	}
}

// TestOptionsRanges: New refuses Options that cannot work, before any I/O.
func TestOptionsRanges(t *testing.T) {
	for name, o := range map[string]Options{
		"negative CommitInterval": {CommitInterval: -time.Second},
		"negative DrainTimeout":   {DrainTimeout: -time.Second},
		"negative Linger":         {Linger: -time.Millisecond},
		"negative SessionTimeout": {SessionTimeout: -time.Second},
		"negative DialTimeout":    {DialTimeout: -time.Second},
		"negative Partitions":     {Partitions: -1},
		"ReplicationFactor -2":    {ReplicationFactor: -2},
		"negative Prefetch":       {Prefetch: -1},
		"huge MaxMessageBytes":    {MaxMessageBytes: 1 << 31},
		"unknown StartOffset":     {StartOffset: 7},
		"unknown Nack":            {Nack: 7},
		"port out of range":       {Brokers: []string{"h:70000"}},
	} {
		if o.Brokers == nil {
			o.Brokers = []string{"127.0.0.1:1"} // never dialled
		}
		start := time.Now()
		_, err := New(context.Background(), o)
		if broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s: %v, want an invalid argument error", name, err)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("%s: New took %v: it dialled before refusing", name, time.Since(start))
		}
	}
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("url.Parse(%q): %v", raw, err)
	}
	return u
}
