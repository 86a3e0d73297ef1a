package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func init() {
	broker.Register(Scheme, broker.DriverFunc(func(ctx context.Context, u *url.URL) (broker.Broker, error) {
		opts, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		return New(ctx, opts)
	}))
}

// urlParams are the query parameters ParseURL knows; the package
// documentation describes each.
var urlParams = []string{
	"client_id", "partitions", "replication", "create_topics", "group", "start",
	"nack", "commit", "commit_interval", "isolation", "drain_timeout", "prefetch",
	"max_message_bytes", "linger", "compression", "session_timeout", "dial_timeout",
	"tls", "tls_ca", "tls_cert", "tls_key", "tls_server_name", "sasl",
}

// ParseURL turns kafka://[user:password@]host:port[,host:port...]/?params
// into Options. Unknown parameters and bad values are an InvalidArgument
// error that lists the valid parameters; the password never appears in it.
func ParseURL(u *url.URL) (Options, error) {
	const op = "kafka: open"
	var o Options
	if u.Scheme != Scheme {
		return o, errf(semantics.InvalidArgument, op, "scheme %q is not %s", u.Scheme, Scheme)
	}
	if u.Path != "" && u.Path != "/" {
		return o, errf(semantics.InvalidArgument, op, "a kafka URL has no path (got %q): topics are named in Publish and SubscriberOptions", u.Path)
	}
	for _, h := range strings.Split(u.Host, ",") {
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, "9092")
		}
		o.Brokers = append(o.Brokers, h)
	}
	if len(o.Brokers) == 0 {
		return o, errf(semantics.InvalidArgument, op, "no broker in %s: use kafka://host:port[,host:port]/", u.Redacted())
	}

	p := broker.NewParams(Scheme, u, urlParams...)
	var kopts []kgo.Opt
	if id := p.String("client_id", ""); id != "" {
		kopts = append(kopts, kgo.ClientID(id))
	}
	o.Partitions = p.Int("partitions", DefaultPartitions)
	o.ReplicationFactor = p.Int("replication", -1)
	o.ManualTopics = !p.Bool("create_topics", true)
	o.Group = p.String("group", "default")
	switch v := p.String("start", "earliest"); v {
	case "earliest":
		o.StartOffset = Earliest
	case "latest":
		o.StartOffset = Latest
	default:
		p.Fail("parameter start=%q must be earliest or latest", v)
	}
	switch v := p.String("nack", "pause"); v {
	case "pause":
		o.Nack = NackPause
	case "retry-topic", "retry_topic":
		o.Nack = NackRetryTopic
	default:
		p.Fail("parameter nack=%q must be pause or retry-topic", v)
	}
	switch v := p.String("commit", "interval"); v {
	case "interval":
	case "ack":
		o.CommitOnAck = true
	default:
		p.Fail("parameter commit=%q must be interval or ack", v)
	}
	o.CommitInterval = p.Duration("commit_interval", DefaultCommitInterval)
	switch v := p.String("isolation", "read_committed"); v {
	case "read_committed":
	case "read_uncommitted":
		o.ReadUncommitted = true
	default:
		p.Fail("parameter isolation=%q must be read_committed or read_uncommitted", v)
	}
	o.DrainTimeout = p.Duration("drain_timeout", DefaultDrainTimeout)
	o.Prefetch = p.Int("prefetch", DefaultPrefetch)
	o.MaxMessageBytes = p.Int("max_message_bytes", DefaultMaxMessageBytes)
	o.Linger = p.Duration("linger", 0)
	switch v := p.String("compression", ""); v {
	case "":
	case "none", "gzip", "snappy", "lz4", "zstd":
		c := map[string]kgo.CompressionCodec{
			"none": kgo.NoCompression(), "gzip": kgo.GzipCompression(), "snappy": kgo.SnappyCompression(),
			"lz4": kgo.Lz4Compression(), "zstd": kgo.ZstdCompression(),
		}[v]
		o.Compression = &c
	default:
		p.Fail("parameter compression=%q must be none, gzip, snappy, lz4 or zstd", v)
	}
	o.SessionTimeout = p.Duration("session_timeout", 0)
	o.DialTimeout = p.Duration("dial_timeout", DefaultDialTimeout)
	for name, v := range map[string]int{"partitions": o.Partitions, "prefetch": o.Prefetch, "max_message_bytes": o.MaxMessageBytes} {
		if v <= 0 {
			p.Fail("parameter %s=%d must be positive", name, v)
		}
	}

	tlsOn := p.Bool("tls", false)
	ca, cert, key, sni := p.String("tls_ca", ""), p.String("tls_cert", ""), p.String("tls_key", ""), p.String("tls_server_name", "")
	if tlsOn || ca != "" || cert != "" || key != "" || sni != "" {
		cfg, err := tlsConfig(ca, cert, key, sni)
		if err != nil {
			p.Fail("%v", err)
		} else {
			kopts = append(kopts, kgo.DialTLSConfig(cfg))
		}
	}
	mech := p.String("sasl", "")
	user := u.User.Username()
	pass, hasPass := u.User.Password()
	switch {
	case mech == "" && u.User != nil:
		p.Fail("the URL has credentials but no sasl parameter: add sasl=plain, scram-sha-256 or scram-sha-512")
	case mech != "" && (user == "" || !hasPass):
		p.Fail("sasl=%s needs user:password@ in the URL", mech)
	case mech == "plain":
		kopts = append(kopts, kgo.SASL(plain.Auth{User: user, Pass: pass}.AsMechanism()))
	case mech == "scram-sha-256":
		kopts = append(kopts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()))
	case mech == "scram-sha-512":
		kopts = append(kopts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()))
	case mech != "":
		p.Fail("parameter sasl=%q must be plain, scram-sha-256 or scram-sha-512", mech)
	}
	if err := p.Err(); err != nil {
		return Options{}, err
	}
	o.ClientOptions = kopts
	return o, nil
}

func tlsConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errf(semantics.InvalidArgument, "kafka: open", "tls_ca %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errf(semantics.InvalidArgument, "kafka: open", "tls_cert and tls_key go together")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}
