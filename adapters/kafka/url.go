package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

func init() {
	driver.Register(Scheme, driver.OpenerFunc(func(ctx context.Context, u *url.URL) (driver.Broker, error) {
		opts, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		b, err := New(ctx, opts)
		if err != nil {
			return nil, err // never a typed nil in the interface
		}
		return b, nil
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
// into Options. Unknown parameters and bad or out-of-range values are an
// InvalidArgument error that lists the valid parameters; the password never
// appears in it.
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
		if err := checkHostPort(h); err != nil {
			return o, errf(semantics.InvalidArgument, op, "broker %q in %s: %v", h, u.Redacted(), err)
		}
		o.Brokers = append(o.Brokers, h)
	}
	if len(o.Brokers) == 0 {
		return o, errf(semantics.InvalidArgument, op, "no broker in %s: use kafka://host:port[,host:port]/", u.Redacted())
	}

	p := driver.NewParams(Scheme, u, urlParams...)
	var kopts []kgo.Opt
	if id := p.String("client_id", ""); id != "" {
		kopts = append(kopts, kgo.ClientID(id))
	}
	o.Partitions = p.IntRange("partitions", DefaultPartitions, 1, maxPartitions)
	if o.ReplicationFactor = p.IntRange("replication", -1, -1, maxReplication); o.ReplicationFactor == 0 {
		p.Fail("parameter replication=0 must be -1 (the broker's default) or at least 1")
	}
	o.ManualTopics = !p.Bool("create_topics", true)
	o.Group = p.String("group", "default")
	if err := checkGroup(op, o.Group); err != nil {
		p.Fail("parameter group: %v", err)
	}
	if p.Enum("start", "earliest", "earliest", "latest") == "latest" {
		o.StartOffset = Latest
	}
	if p.Enum("nack", "pause", "pause", "retry-topic", "retry_topic") != "pause" {
		o.Nack = NackRetryTopic
	}
	o.CommitOnAck = p.Enum("commit", "interval", "interval", "ack") == "ack"
	o.CommitInterval = positive(p, "commit_interval", DefaultCommitInterval)
	o.ReadUncommitted = p.Enum("isolation", "read_committed", "read_committed", "read_uncommitted") == "read_uncommitted"
	o.DrainTimeout = positive(p, "drain_timeout", DefaultDrainTimeout)
	o.Prefetch = p.IntRange("prefetch", DefaultPrefetch, 1, math.MaxInt32)
	o.MaxMessageBytes = p.IntRange("max_message_bytes", DefaultMaxMessageBytes, 1, maxMessageBytesLimit)
	o.Linger = p.Duration("linger", 0)
	if v := p.Enum("compression", "none", "none", "gzip", "snappy", "lz4", "zstd"); v != "none" {
		c := map[string]kgo.CompressionCodec{
			"gzip": kgo.GzipCompression(), "snappy": kgo.SnappyCompression(),
			"lz4": kgo.Lz4Compression(), "zstd": kgo.ZstdCompression(),
		}[v]
		o.Compression = &c
	}
	if p.String("session_timeout", "") != "" {
		o.SessionTimeout = positive(p, "session_timeout", 0)
		if o.SessionTimeout > maxSessionTimeout {
			p.Fail("parameter session_timeout=%v is too long (at most %v)", o.SessionTimeout, maxSessionTimeout)
		}
	}
	o.DialTimeout = positive(p, "dial_timeout", DefaultDialTimeout)

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

// positive reads a duration parameter that must be above zero.
func positive(p *driver.Params, name string, def time.Duration) time.Duration {
	d := p.Duration(name, def) // refuses negative ones
	if d == 0 {
		p.Fail("parameter %s=0 must be positive", name)
		return def
	}
	return d
}

func tlsConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("tls_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls_ca %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("tls_cert and tls_key go together")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("tls_cert and tls_key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}
