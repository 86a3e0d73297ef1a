package rabbitmq

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// URL parameters, documented in doc.go.
var knownParams = []string{
	"exchange", "exchange_type", "queue_type", "prefetch", "confirm_window", "passive", "mandatory",
	"max_message_size", "connection_name", "heartbeat", "connect_timeout", "reconnect_max_wait",
	"cacertfile", "certfile", "keyfile", "server_name_indication",
}

// config is a parsed URL: how to dial and the Options.
type config struct {
	opts     Options
	uri      amqp.URI
	amqp     amqp.Config
	timeout  time.Duration // connect_timeout
	redacted string
}

func parseURL(rawURL string, opts Options) (*config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, broker.Errorf(semantics.InvalidArgument, "rabbitmq: open", "malformed URL %s", broker.Redact(rawURL))
	}
	return parseParsedURL(u, opts)
}

func parseParsedURL(u *url.URL, opts Options) (*config, error) {
	const op = "rabbitmq: open"
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "URL %s: scheme must be amqp or amqps", u.Redacted())
	}
	p := broker.NewParams("rabbitmq", u, knownParams...)
	opts.Exchange = p.String("exchange", opts.Exchange)
	opts.ExchangeType = p.String("exchange_type", opts.ExchangeType)
	opts.QueueType = p.String("queue_type", opts.QueueType)
	opts.Prefetch = p.Int("prefetch", opts.Prefetch)
	opts.ConfirmWindow = p.Int("confirm_window", opts.ConfirmWindow)
	opts.Passive = p.Bool("passive", opts.Passive)
	opts.AllowUnroutable = !p.Bool("mandatory", !opts.AllowUnroutable)
	opts.MaxMessageSize = p.Int("max_message_size", opts.MaxMessageSize)
	opts.ReconnectMaxWait = p.Duration("reconnect_max_wait", opts.ReconnectMaxWait)
	opts.ConnectionName = p.String("connection_name", opts.ConnectionName)
	heartbeat := p.Duration("heartbeat", 10*time.Second)
	timeout := p.Duration("connect_timeout", 10*time.Second)
	caFile, certFile, keyFile := p.String("cacertfile", ""), p.String("certfile", ""), p.String("keyfile", "")
	serverName := p.String("server_name_indication", "")
	if heartbeat < 0 || timeout <= 0 {
		p.Fail("heartbeat must be >= 0 and connect_timeout > 0")
	}
	if u.Scheme == "amqp" && caFile+certFile+keyFile+serverName != "" {
		p.Fail("cacertfile, certfile, keyfile and server_name_indication need an amqps:// URL")
	}
	if (certFile == "") != (keyFile == "") {
		p.Fail("certfile and keyfile go together")
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if _, err := opts.withDefaults(); err != nil {
		return nil, broker.WrapError(semantics.InvalidArgument, op, err)
	}

	bare := *u
	bare.RawQuery = ""
	bare.Fragment = ""
	uri, err := amqp.ParseURI(bare.String())
	if err != nil {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "URL %s: %s", u.Redacted(), redactErr(err, u))
	}
	cfg := &config{opts: opts, uri: uri, timeout: timeout, redacted: u.Redacted()}
	cfg.amqp = amqp.Config{
		SASL:      []amqp.Authentication{&amqp.PlainAuth{Username: uri.Username, Password: uri.Password}},
		Vhost:     uri.Vhost,
		Heartbeat: heartbeat,
		Locale:    "en_US",
	}
	if u.Scheme == "amqps" {
		tc := &tls.Config{ServerName: uri.Host, MinVersion: tls.VersionTLS12}
		if serverName != "" {
			tc.ServerName = serverName
		}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, broker.Errorf(semantics.InvalidArgument, op, "cacertfile: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, broker.Errorf(semantics.InvalidArgument, op, "cacertfile %s holds no PEM certificate", caFile)
			}
		}
		if certFile != "" {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, broker.Errorf(semantics.InvalidArgument, op, "certfile/keyfile: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		cfg.amqp.TLSClientConfig = tc
	}
	return cfg, nil
}

// dialer returns the function that makes one connection, named for the
// RabbitMQ management UI, bounded by ctx and connect_timeout through the
// TLS and AMQP handshakes.
func (c *config) dialer(role string) func(ctx context.Context) (*amqp.Connection, error) {
	return func(ctx context.Context) (*amqp.Connection, error) {
		cfg := c.amqp
		if cfg.TLSClientConfig != nil {
			cfg.TLSClientConfig = cfg.TLSClientConfig.Clone()
		}
		name := c.opts.ConnectionName
		if name == "" {
			name = "queuekit"
		}
		cfg.Properties = amqp.Table{"connection_name": name + " " + role, "product": "queuekit"}
		deadline := time.Now().Add(c.timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		cfg.Dial = func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Deadline: deadline}
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bound the TLS and AMQP handshakes too; amqp091 clears the
			// deadline once the connection is open.
			if err := conn.SetDeadline(deadline); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		}
		conn, err := amqp.DialConfig(c.uri.String(), cfg)
		if err != nil {
			return nil, redactedError{msg: fmt.Sprintf("connect to %s:%d: %s", c.uri.Host, c.uri.Port, redactErr(err, nil, c.uri.Password)), err: err}
		}
		return conn, nil
	}
}

// redactErr returns err's text without the URL's password.
func redactErr(err error, u *url.URL, extra ...string) string {
	s := err.Error()
	var secrets []string
	if u != nil {
		if pw, ok := u.User.Password(); ok {
			secrets = append(secrets, pw, url.QueryEscape(pw), url.PathEscape(pw))
		}
	}
	secrets = append(secrets, extra...)
	for _, pw := range secrets {
		if pw != "" {
			s = strings.ReplaceAll(s, pw, "xxxxx")
		}
	}
	return s
}

// redactedError keeps the cause for errors.As while its text hides the
// password.
type redactedError struct {
	msg string
	err error
}

func (e redactedError) Error() string { return e.msg }
func (e redactedError) Unwrap() error { return e.err }
