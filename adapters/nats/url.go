package nats

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

func init() {
	driver.Register(Scheme, driver.OpenerFunc(func(ctx context.Context, u *url.URL) (driver.Broker, error) {
		cfg, err := parseParsedURL(u)
		if err != nil {
			return nil, err
		}
		return dial(ctx, cfg)
	}))
}

// DefaultReconnectWait is the pause between reconnect attempts to one
// server (nats.go's own default is 2s).
const DefaultReconnectWait = 250 * time.Millisecond

// DefaultAddr is where a nats:// URL without a host connects.
const DefaultAddr = "127.0.0.1:4222"

// URL parameters, documented in doc.go.
var knownParams = []string{
	"ack_wait", "max_ack_pending", "prefetch", "publish_window", "publish_timeout",
	"storage", "replicas", "retention", "max_age", "domain",
	"connect_timeout", "reconnect_wait", "name", "tls", "tls_ca", "tls_cert", "tls_key",
	"creds", "jwt", "nkey",
}

// config is a parsed URL: where and how to connect, and the Options.
type config struct {
	opts     Options
	server   string // nats://host:port, without credentials
	nats     []nats.Option
	redacted string
}

// Open connects to the NATS server at rawURL (see the package doc for its
// parameters) and checks that it runs JetStream. Close closes the
// connection. Use it as broker.New(b), or open with broker.Open.
func Open(ctx context.Context, rawURL string) (*Broker, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, driver.Errorf(semantics.InvalidArgument, "nats: open", "malformed URL %s", driver.Redact(rawURL))
	}
	cfg, err := parseParsedURL(u)
	if err != nil {
		return nil, err
	}
	return dial(ctx, cfg)
}

func parseParsedURL(u *url.URL) (*config, error) {
	const op = "nats: open"
	redacted := driver.Redact(u.String())
	if u.Scheme != Scheme {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "URL %s: scheme must be nats", redacted)
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "a nats URL is nats://[user:password@|token@]host[:port][?params], got %s", redacted)
	}
	p := driver.NewParams(Scheme, u, knownParams...)
	var o Options
	o.AckWait = p.Duration("ack_wait", DefaultAckWait)
	o.MaxAckPending = p.IntRange("max_ack_pending", DefaultMaxAckPending, 1, maxAckPendingLimit)
	o.Prefetch = p.IntRange("prefetch", DefaultPrefetch, 1, maxPrefetch)
	o.PublishWindow = p.IntRange("publish_window", DefaultPublishWindow, 1, maxPublishWindow)
	o.PublishTimeout = p.Duration("publish_timeout", DefaultPublishTimeout)
	switch p.Enum("storage", "file", "file", "memory") {
	case "memory":
		o.Storage = jetstream.MemoryStorage
	default:
		o.Storage = jetstream.FileStorage
	}
	o.Replicas = p.IntRange("replicas", 1, 1, 5)
	o.Retention = p.Enum("retention", Limits, Limits, Interest)
	o.MaxAge = p.Duration("max_age", 0)
	o.Domain = p.String("domain", "")
	timeout := p.Duration("connect_timeout", 5*time.Second)
	reconnectWait := p.Duration("reconnect_wait", DefaultReconnectWait)
	name := p.String("name", "queuekit")
	useTLS := p.Bool("tls", false)
	ca, cert, key := p.String("tls_ca", ""), p.String("tls_cert", ""), p.String("tls_key", "")
	creds, jwt, seed := p.String("creds", ""), p.String("jwt", ""), p.String("nkey", "")

	if o.AckWait < time.Millisecond || o.AckWait > maxAckWait {
		p.Fail("parameter ack_wait=%v is out of range [1ms, %v]", o.AckWait, maxAckWait)
		o.AckWait = DefaultAckWait
	}
	if o.PublishTimeout < time.Millisecond || o.PublishTimeout > time.Hour {
		p.Fail("parameter publish_timeout=%v is out of range [1ms, 1h]", o.PublishTimeout)
		o.PublishTimeout = DefaultPublishTimeout
	}
	if o.MaxAge != 0 && o.MaxAge < minMaxAge {
		p.Fail("parameter max_age=%v must be 0 (no limit) or at least %v", o.MaxAge, minMaxAge)
		o.MaxAge = 0
	}
	if timeout <= 0 || timeout > 5*time.Minute {
		p.Fail("parameter connect_timeout=%v is out of range (0, 5m]", timeout)
	}
	if o.Domain != "" {
		if err := checkGroup(op, o.Domain); err != nil {
			p.Fail("parameter domain=%q is not a valid JetStream domain (printable ASCII without '.', '*', '>', '/', '\\')", clip(o.Domain))
		}
	}
	if reconnectWait < time.Millisecond || reconnectWait > time.Minute {
		p.Fail("parameter reconnect_wait=%v is out of range [1ms, 1m]", reconnectWait)
	}
	if (cert == "") != (key == "") {
		p.Fail("parameters tls_cert and tls_key go together")
	}
	if creds != "" && (jwt != "" || seed != "") {
		p.Fail("parameter creds (a JWT and its seed in one file) excludes jwt and nkey")
	}
	if jwt != "" && seed == "" {
		p.Fail("parameter jwt needs nkey (the seed file that signs for it)")
	}
	if u.User != nil && (creds != "" || jwt != "" || seed != "") {
		p.Fail("credentials in the URL's user part exclude creds, jwt and nkey")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host, _, _ = net.SplitHostPort(DefaultAddr)
	}
	if port == "" {
		port = "4222"
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		p.Fail("port %s is out of range [1, 65535]", port)
	}
	if len(host) > 253 {
		p.Fail("host name is %d bytes, over 253", len(host))
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if _, err := o.withDefaults(); err != nil {
		return nil, err
	}

	nopts := []nats.Option{nats.Name(name), nats.Timeout(timeout), nats.MaxReconnects(-1), nats.ReconnectWait(reconnectWait)}
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			nopts = append(nopts, nats.UserInfo(u.User.Username(), pw))
		} else {
			nopts = append(nopts, nats.Token(u.User.Username()))
		}
	}
	if useTLS || ca != "" || cert != "" {
		nopts = append(nopts, nats.Secure())
	}
	if ca != "" {
		nopts = append(nopts, nats.RootCAs(ca))
	}
	if cert != "" {
		nopts = append(nopts, nats.ClientCert(cert, key))
	}
	switch {
	case creds != "":
		nopts = append(nopts, nats.UserCredentials(creds))
	case jwt != "":
		nopts = append(nopts, nats.UserCredentials(jwt, seed))
	case seed != "":
		opt, err := nats.NkeyOptionFromSeed(seed)
		if err != nil {
			// The error may quote the file; never its content.
			return nil, driver.Errorf(semantics.InvalidArgument, op, "parameter nkey: cannot read the seed file: %v", err)
		}
		nopts = append(nopts, opt)
	}
	return &config{
		opts:     o,
		server:   "nats://" + net.JoinHostPort(host, port),
		nats:     nopts,
		redacted: redacted,
	}, nil
}

// dial connects and checks that the account has JetStream.
func dial(ctx context.Context, cfg *config) (*Broker, error) {
	const op = "nats: open"
	if err := ctx.Err(); err != nil {
		return nil, driver.Canceled(op, err)
	}
	nc, err := nats.Connect(cfg.server, cfg.nats...)
	if err != nil {
		return nil, &driver.Error{Kind: kindOf(err), Op: op, Err: fmt.Errorf("connect to %s: %w", cfg.redacted, err)}
	}
	b, err := newBroker(nc, cfg.opts, true)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if _, err := b.js.AccountInfo(ctx); err != nil {
		nc.Close()
		if kindOf(err) == semantics.Unsupported {
			return nil, driver.Errorf(semantics.Unsupported, op, "%s: the server or account has no JetStream (start nats-server with -js): %w", cfg.redacted, err)
		}
		return nil, &driver.Error{Kind: kindOf(err), Op: op, Err: fmt.Errorf("%s: JetStream account info: %w", cfg.redacted, err)}
	}
	return b, nil
}
