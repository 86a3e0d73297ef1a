package redisstreams

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// URL schemes this adapter registers: redis+streams:// and, with TLS,
// rediss+streams://.
const (
	Scheme    = "redis+streams"
	SchemeTLS = "rediss+streams"
)

// DefaultAddr is the server of a URL without a host.
const DefaultAddr = "127.0.0.1:6379"

func init() {
	driver.Register(Scheme, driver.OpenerFunc(openURL))
	driver.Register(SchemeTLS, driver.OpenerFunc(openURL))
}

// urlParams are the URL parameters, all optional (see the package doc).
var urlParams = []string{"prefix", "shards", "maxlen", "ack_timeout", "prefetch", "batch", "block",
	"claim_interval", "max_size", "dial_timeout", "read_timeout", "write_timeout", "pool_size"}

// Open opens a Broker from a redis+streams:// or rediss+streams:// URL (see
// the package documentation). The Broker owns its client: Close closes it.
func Open(ctx context.Context, rawURL string) (*Broker, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != Scheme && u.Scheme != SchemeTLS) {
		return nil, invalid("redisstreams: open", "malformed %s:// URL %s", Scheme, driver.Redact(rawURL))
	}
	return open(ctx, u)
}

func openURL(ctx context.Context, u *url.URL) (driver.Broker, error) {
	b, err := open(ctx, u)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func open(ctx context.Context, u *url.URL) (*Broker, error) {
	const op = "redisstreams: open"
	ro, opts, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	client := redis.NewClient(ro)
	b, err := New(client, opts)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	b.own = true
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, driver.WrapError(kindOf(err), op, redactErr(err, ro.Password))
	}
	return b, nil
}

// parseURL reads u into go-redis options and the adapter's Options.
func parseURL(u *url.URL) (*redis.Options, Options, error) {
	const op = "redisstreams: open"
	if u.Opaque != "" {
		return nil, Options{}, invalid(op, "a %s URL is %s://[user:password@]host:port/db?params, got %s", u.Scheme, u.Scheme, u.Redacted())
	}
	p := driver.NewParams(Scheme, u, urlParams...)
	ro := &redis.Options{Addr: DefaultAddr, ContextTimeoutEnabled: true}
	if h := u.Host; h != "" {
		host, port := u.Hostname(), u.Port()
		if host == "" {
			host = "127.0.0.1"
		}
		if port == "" {
			port = "6379"
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			p.Fail("port %q is not within 1-65535", port)
		}
		ro.Addr = net.JoinHostPort(host, port)
	}
	if u.User != nil {
		ro.Username = u.User.Username()
		ro.Password, _ = u.User.Password()
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			p.Fail("database %q in the path is not a number >= 0", db)
		}
		ro.DB = n
	}
	if u.Scheme == SchemeTLS {
		ro.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.Hostname()}
	}
	opts := Options{
		Prefix:         p.String("prefix", ""),
		Shards:         p.IntRange("shards", DefaultShards, 1, MaxShards),
		AckTimeout:     p.Duration("ack_timeout", DefaultAckTimeout),
		Prefetch:       p.IntRange("prefetch", DefaultPrefetch, 1, MaxPrefetch),
		Batch:          p.IntRange("batch", DefaultBatch, 1, MaxBatch),
		Block:          p.Duration("block", DefaultBlock),
		ClaimInterval:  p.Duration("claim_interval", 0),
		MaxMessageSize: p.IntRange("max_size", DefaultMaxMessageSize, 1, MaxMessageSize),
	}
	if n := p.Int("maxlen", 0); n < 0 {
		p.Fail("parameter maxlen=%d must be >= 0 (0: no cap)", n)
	} else {
		opts.MaxLen = int64(n)
	}
	if opts.Prefix != "" {
		if err := checkName(op, "parameter prefix", opts.Prefix); err != nil {
			p.Fail("%v", strings.TrimPrefix(err.Error(), op+": "))
		}
	}
	if opts.AckTimeout < MinAckTimeout {
		p.Fail("parameter ack_timeout=%v must be >= %v", opts.AckTimeout, MinAckTimeout)
	}
	if opts.Block < MinBlock || opts.Block > MaxBlock {
		p.Fail("parameter block=%v is not within %v-%v", opts.Block, MinBlock, MaxBlock)
	}
	if c := opts.ClaimInterval; c != 0 && c < MinClaimInterval {
		p.Fail("parameter claim_interval=%v must be >= %v", c, MinClaimInterval)
	}
	ro.DialTimeout = p.Duration("dial_timeout", 5*time.Second)
	ro.ReadTimeout = p.Duration("read_timeout", 3*time.Second)
	ro.WriteTimeout = p.Duration("write_timeout", 3*time.Second)
	ro.PoolSize = p.IntRange("pool_size", 0, 0, 1<<16)
	for name, d := range map[string]time.Duration{"dial_timeout": ro.DialTimeout, "read_timeout": ro.ReadTimeout, "write_timeout": ro.WriteTimeout} {
		if d == 0 && p.String(name, "") != "" {
			p.Fail("parameter %s must be > 0", name)
		}
	}
	if err := p.Err(); err != nil {
		return nil, Options{}, err
	}
	return ro, opts, nil
}

// redactErr keeps a password out of an error's text.
func redactErr(err error, password string) error {
	if password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return driver.Errorf(semantics.Unknown, "", "%s", strings.ReplaceAll(err.Error(), password, "xxxxx"))
}
