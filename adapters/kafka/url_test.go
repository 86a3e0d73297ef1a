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
		"kafka://h:1/?partitions=0":                 "partitions=0 must be positive",
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
	kb, ok := b.(*Broker)
	if !ok {
		t.Fatalf("Open returned %T", b)
	}
	topic := newTopic(t)
	pub, _ := b.NewPublisher(context.Background())
	if err := pub.Publish(context.Background(), topic, &broker.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	lags, err := kb.Lag(context.Background(), "nobody", topic)
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
	pub, _ := b.NewPublisher(ctx)
	if err := pub.Publish(ctx, newTopic(t), &broker.Message{Payload: []byte("x")}); err != nil {
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
