package rabbitmq

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

func init() {
	o := driver.OpenerFunc(func(ctx context.Context, u *url.URL) (driver.Broker, error) {
		cfg, err := parseParsedURL(u, Options{})
		if err != nil {
			return nil, err
		}
		return open(ctx, cfg)
	})
	driver.Register(Scheme, o)
	driver.Register(SchemeTLS, o)
}

// URL parameters, documented in doc.go.
var knownParams = []string{
	"exchange", "exchange_type", "queue_type", "prefetch", "confirm_window", "passive", "mandatory",
	"max_message_size", "connection_name", "heartbeat", "connect_timeout", "reconnect_max_wait",
	"cacertfile", "certfile", "keyfile", "server_name_indication", "registry",
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
		return nil, driver.Errorf(semantics.InvalidArgument, "rabbitmq: open", "malformed URL %s", driver.Redact(rawURL))
	}
	return parseParsedURL(u, opts)
}

// maxHeartbeat is the longest AMQP heartbeat, a 16-bit count of seconds.
const maxHeartbeat = 65535 * time.Second

func parseParsedURL(u *url.URL, opts Options) (*config, error) {
	const op = "rabbitmq: open"
	if u.Scheme != Scheme && u.Scheme != SchemeTLS {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "URL %s: scheme must be amqp or amqps", u.Redacted())
	}
	p := driver.NewParams("rabbitmq", u, knownParams...)
	opts.Exchange = p.String("exchange", opts.Exchange)
	opts.ExchangeType = p.Enum("exchange_type", defaultString(opts.ExchangeType, DefaultExchangeType), "direct", "topic")
	opts.QueueType = p.Enum("queue_type", defaultString(opts.QueueType, Quorum), Quorum, Classic)
	opts.Prefetch = p.IntRange("prefetch", opts.Prefetch, 0, 65535)
	opts.ConfirmWindow = p.IntRange("confirm_window", opts.ConfirmWindow, 0, MaxConfirmWindow)
	opts.Passive = p.Bool("passive", opts.Passive)
	opts.NoRegistry = !p.Bool("registry", !opts.NoRegistry)
	if !p.Bool("mandatory", true) {
		p.Fail("mandatory=false is not supported: a message no group receives is refused (ErrNoGroup) on every broker; declare the groups first (Broker.Declare)")
	}
	opts.MaxMessageSize = p.IntRange("max_message_size", opts.MaxMessageSize, 0, MaxMessageSizeLimit)
	opts.ReconnectMaxWait = p.Duration("reconnect_max_wait", opts.ReconnectMaxWait)
	opts.ConnectionName = p.String("connection_name", opts.ConnectionName)
	heartbeat := p.Duration("heartbeat", 10*time.Second)
	timeout := p.Duration("connect_timeout", 10*time.Second)
	caFile, certFile, keyFile := p.String("cacertfile", ""), p.String("certfile", ""), p.String("keyfile", "")
	serverName := p.String("server_name_indication", "")
	if heartbeat != 0 && (heartbeat < time.Second || heartbeat > maxHeartbeat) {
		p.Fail("heartbeat=%v is out of range: 0 (the server's) or 1s..%v (AMQP counts it in whole seconds, 16 bits)", heartbeat, maxHeartbeat)
	}
	if timeout <= 0 {
		p.Fail("connect_timeout must be > 0")
	}
	if len(opts.ConnectionName) > 1024 {
		p.Fail("connection_name is %d bytes, over 1024", len(opts.ConnectionName))
	}
	if u.Scheme == Scheme && caFile+certFile+keyFile+serverName != "" {
		p.Fail("cacertfile, certfile, keyfile and server_name_indication need an amqps:// URL")
	}
	if (certFile == "") != (keyFile == "") {
		p.Fail("certfile and keyfile go together")
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			p.Fail("port %s is out of range 1..65535", port)
		}
	}
	if vhost := vhostOf(u); len(vhost) > maxShortstr || !utf8.ValidString(vhost) {
		p.Fail("vhost %q must be at most 255 bytes of UTF-8", clip(vhost))
	}
	if len(u.Hostname()) > 253 {
		p.Fail("host name is %d bytes, over 253", len(u.Hostname()))
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if _, err := opts.withDefaults(); err != nil {
		return nil, driver.WrapError(semantics.InvalidArgument, op, err)
	}

	bare := *u
	bare.RawQuery = ""
	bare.Fragment = ""
	uri, err := amqp.ParseURI(bare.String())
	if err != nil {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "URL %s: %s", u.Redacted(), redactErr(err, u))
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
				return nil, driver.Errorf(semantics.InvalidArgument, op, "cacertfile: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, driver.Errorf(semantics.InvalidArgument, op, "cacertfile %s holds no PEM certificate", caFile)
			}
		}
		if certFile != "" {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, driver.Errorf(semantics.InvalidArgument, op, "certfile/keyfile: %w", err)
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
		var cc *corkConn
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
			cc = &corkConn{Conn: conn}
			return cc, nil
		}
		conn, err := amqp.DialConfig(c.uri.String(), cfg)
		if err != nil {
			return nil, redactedError{msg: fmt.Sprintf("connect to %s:%d: %s", c.uri.Host, c.uri.Port, redactErr(err, nil, c.uri.Password)), err: err}
		}
		trackCork(conn, cc)
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

// defaultString returns s, or def when s is empty.
func defaultString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// vhostOf returns the vhost of an AMQP URL, as amqp.ParseURI reads it.
func vhostOf(u *url.URL) string {
	switch {
	case u.Path == "" || u.Path == "/":
		return "/"
	case u.Host == "" && strings.HasPrefix(u.Path, "///"):
		return u.Path[3:]
	case strings.HasPrefix(u.Path, "/"):
		return u.Path[1:]
	}
	return u.Path
}
