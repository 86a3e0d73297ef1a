package ingest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/ingest/limitreq"
	"github.com/queuekit/queuekit/semantics"
)

// Config is what a Handler enforces, and what `queuekit serve` reads from its
// JSON config file (see the package documentation for an example). The
// zero value of each limit means its default.
type Config struct {
	// Tokens are the bearer tokens allowed to publish, each with its
	// topics.
	Tokens []Token `json:"tokens"`
	// AnonymousTopics may be published to without a token. Empty (the
	// default): every request needs a token.
	AnonymousTopics []string `json:"anonymous_topics,omitempty"`
	// Zones are the rate limits, applied in order (nginx's limit_req).
	Zones []Zone `json:"zones,omitempty"`

	// MaxInFlight bounds the requests past the rate limit that are reading
	// their body or publishing at once; one more is shed with 503.
	// Default 256.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// MaxDelayed bounds the requests waiting in a zone's delaying mode;
	// one more is shed with 503. Default 1024.
	MaxDelayed int `json:"max_delayed,omitempty"`
	// MaxBodyBytes bounds the body of a single-message request and each
	// payload of a batch. Default 1 MiB.
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`
	// MaxBatchBytes bounds the body of a batch request. Default 8 MiB.
	MaxBatchBytes int64 `json:"max_batch_bytes,omitempty"`
	// MaxBatchMessages bounds the messages of a batch. Default 1000.
	MaxBatchMessages int `json:"max_batch_messages,omitempty"`
	// PublishTimeout bounds one Publish call; past it the request gets 503
	// (and may be retried with the same Idempotency-Key). Default 10s.
	PublishTimeout Duration `json:"publish_timeout,omitempty"`
	// RetryAfter is the Retry-After of a 503. Default 1s.
	RetryAfter Duration `json:"retry_after,omitempty"`

	// Server configures the HTTP server of `queuekit serve` (and of
	// NewServer); a Handler mounted in another server ignores it.
	Server ServerConfig `json:"server,omitempty"`
}

// Token is one bearer token: a name for logs and metrics, the hex SHA-256 of
// the secret (HashToken), and the topics it may publish to.
type Token struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	// Topics are exact topic names, prefixes ending in "*" ("orders.*"
	// allows "orders.eu"), or "*" for every topic.
	Topics []string `json:"topics"`
}

// Zone is one rate limit with nginx's limit_req semantics (package
// limitreq): limit_req_zone's key and rate, and limit_req's burst,
// nodelay and delay.
type Zone struct {
	// Name identifies the zone in logs, metrics and errors.
	Name string `json:"name"`
	// Key is what the rate is counted per: "token" (the token's name;
	// anonymous requests share one key), "addr" (the IP address of the
	// connection's peer: behind a proxy, use a header the proxy sets, such
	// as "header:X-Real-IP"), "header:<Name>" (that request header's value;
	// a request without it is not limited by this zone, as nginx skips an
	// empty key), or "global" (every request alike).
	Key string `json:"key"`
	// Rate is nginx's rate=, such as "50r/s" or "600r/m".
	Rate string `json:"rate"`
	// Burst is nginx's burst= (default 0).
	Burst int `json:"burst,omitempty"`
	// NoDelay passes the whole burst at once (nginx's nodelay).
	NoDelay bool `json:"nodelay,omitempty"`
	// Delay passes that many requests of a burst at once and delays the
	// rest (nginx's delay=). Without NoDelay or Delay, every request over
	// the rate is delayed to conform to it, nginx's default.
	Delay int `json:"delay,omitempty"`
	// MaxKeys bounds the keys the zone remembers, like the size of an
	// nginx zone (default limitreq.DefaultMaxKeys).
	MaxKeys int `json:"max_keys,omitempty"`
}

// ServerConfig holds the settings of the HTTP server (NewServer).
type ServerConfig struct {
	// Listen is the address to listen on. Default ":8080".
	Listen string `json:"listen,omitempty"`
	// TLSCert and TLSKey are PEM files; with both set the server speaks
	// HTTPS only.
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
	// ReadHeaderTimeout bounds reading a request's headers. Default 5s.
	ReadHeaderTimeout Duration `json:"read_header_timeout,omitempty"`
	// ReadTimeout bounds reading a whole request, body included.
	// Default 30s.
	ReadTimeout Duration `json:"read_timeout,omitempty"`
	// WriteTimeout bounds a request from the end of its headers to the end
	// of the response (rate-limit delays and the publish included).
	// Default 60s.
	WriteTimeout Duration `json:"write_timeout,omitempty"`
	// IdleTimeout closes idle keep-alive connections. Default 120s.
	IdleTimeout Duration `json:"idle_timeout,omitempty"`
	// MaxHeaderBytes bounds a request's headers. Default 16 KiB.
	MaxHeaderBytes int `json:"max_header_bytes,omitempty"`
	// MaxConnections bounds open connections; further ones wait in the
	// kernel's accept queue. Default 4096.
	MaxConnections int `json:"max_connections,omitempty"`
	// ShutdownTimeout bounds the graceful shutdown. Default 30s.
	ShutdownTimeout Duration `json:"shutdown_timeout,omitempty"`
}

// Duration is a time.Duration written in JSON as a string such as "5s" or
// "250ms".
type Duration time.Duration

// UnmarshalJSON reads "5s"-style strings.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"5s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string such as "5s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Defaults of Config and ServerConfig.
const (
	DefaultMaxInFlight       = 256
	DefaultMaxDelayed        = 1024
	DefaultMaxBodyBytes      = 1 << 20
	DefaultMaxBatchBytes     = 8 << 20
	DefaultMaxBatchMessages  = 1000
	DefaultPublishTimeout    = 10 * time.Second
	DefaultRetryAfter        = time.Second
	DefaultListen            = ":8080"
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 60 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 16 << 10
	DefaultMaxConnections    = 4096
	DefaultShutdownTimeout   = 30 * time.Second
)

// ParseConfig reads a JSON config, rejecting unknown fields, and validates
// it.
func ParseConfig(r io.Reader) (Config, error) {
	var c Config
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, broker.Errorf(semantics.InvalidArgument, "ingest: config", "%v", err)
	}
	if dec.More() {
		return Config{}, broker.Errorf(semantics.InvalidArgument, "ingest: config", "more than one JSON value")
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads and validates the JSON config file at path.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, broker.Errorf(semantics.InvalidArgument, "ingest: config", "%v", err)
	}
	c, err := ParseConfig(bytes.NewReader(b))
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate returns an InvalidArgument error naming the first thing wrong.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return broker.Errorf(semantics.InvalidArgument, "ingest: config", format, args...)
	}
	names := map[string]bool{}
	hashes := map[string]bool{}
	for i, t := range c.Tokens {
		switch {
		case t.Name == "":
			return bad("tokens[%d] has no name", i)
		case names[t.Name]:
			return bad("token name %q is used twice", t.Name)
		case len(t.SHA256) != 64 || !isHex(t.SHA256):
			return bad("token %q: sha256 must be 64 hex digits (queuekit serve -hash-token prints it)", t.Name)
		case hashes[strings.ToLower(t.SHA256)]:
			return bad("token %q: the same token hash is listed twice", t.Name)
		case len(t.Topics) == 0:
			return bad("token %q has no topics", t.Name)
		}
		for _, p := range t.Topics {
			if err := validPattern(p); err != nil {
				return bad("token %q: %v", t.Name, err)
			}
		}
		names[t.Name], hashes[strings.ToLower(t.SHA256)] = true, true
	}
	for _, p := range c.AnonymousTopics {
		if err := validPattern(p); err != nil {
			return bad("anonymous_topics: %v", err)
		}
	}
	zones := map[string]bool{}
	for i, z := range c.Zones {
		switch {
		case z.Name == "":
			return bad("zones[%d] has no name", i)
		case zones[z.Name]:
			return bad("zone %q is defined twice", z.Name)
		case z.Burst < 0 || z.Delay < 0 || z.MaxKeys < 0:
			return bad("zone %q: burst, delay and max_keys must be >= 0", z.Name)
		case z.NoDelay && z.Delay > 0:
			return bad("zone %q: nodelay and delay exclude each other", z.Name)
		}
		if _, err := limitreq.ParseRate(z.Rate); err != nil {
			return bad("zone %q: %v", z.Name, err)
		}
		if _, err := parseZoneKey(z.Key); err != nil {
			return bad("zone %q: %v", z.Name, err)
		}
		zones[z.Name] = true
	}
	if c.MaxInFlight < 0 || c.MaxDelayed < 0 || c.MaxBodyBytes < 0 || c.MaxBatchBytes < 0 || c.MaxBatchMessages < 0 ||
		c.Server.MaxHeaderBytes < 0 || c.Server.MaxConnections < 0 {
		return bad("limits must be >= 0 (0 means the default)")
	}
	if (c.Server.TLSCert == "") != (c.Server.TLSKey == "") {
		return bad("server: tls_cert and tls_key go together")
	}
	return nil
}

// withDefaults returns c with every zero limit set to its default.
func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def64 := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *Duration, d time.Duration) {
		if *v == 0 {
			*v = Duration(d)
		}
	}
	def(&c.MaxInFlight, DefaultMaxInFlight)
	def(&c.MaxDelayed, DefaultMaxDelayed)
	def64(&c.MaxBodyBytes, DefaultMaxBodyBytes)
	def64(&c.MaxBatchBytes, DefaultMaxBatchBytes)
	def(&c.MaxBatchMessages, DefaultMaxBatchMessages)
	defD(&c.PublishTimeout, DefaultPublishTimeout)
	defD(&c.RetryAfter, DefaultRetryAfter)
	s := &c.Server
	if s.Listen == "" {
		s.Listen = DefaultListen
	}
	defD(&s.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	defD(&s.ReadTimeout, DefaultReadTimeout)
	defD(&s.WriteTimeout, DefaultWriteTimeout)
	defD(&s.IdleTimeout, DefaultIdleTimeout)
	def(&s.MaxHeaderBytes, DefaultMaxHeaderBytes)
	def(&s.MaxConnections, DefaultMaxConnections)
	defD(&s.ShutdownTimeout, DefaultShutdownTimeout)
	return c
}

// HashToken returns the hex SHA-256 of a bearer token: what Token.SHA256
// holds, so the config never contains the secret itself.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// NewToken returns a random bearer token (32 bytes, URL-safe base64) and
// its hash for the config.
func NewToken() (token, sha256Hex string) {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	token = "qk_" + base64.RawURLEncoding.EncodeToString(b[:])
	return token, HashToken(token)
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// validPattern checks a topic pattern: a topic name, optionally ending in
// "*", or "*" alone.
func validPattern(p string) error {
	name := strings.TrimSuffix(p, "*")
	if name == "" && p == "*" {
		return nil
	}
	if strings.Contains(name, "*") {
		return fmt.Errorf("topic pattern %q: only a trailing * is allowed", p)
	}
	if err := validTopic(name); err != nil {
		return fmt.Errorf("topic pattern %q: %v", p, err)
	}
	return nil
}

// matchTopic reports whether topic is allowed by one of patterns.
func matchTopic(patterns []string, topic string) bool {
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if strings.HasPrefix(topic, prefix) {
				return true
			}
		} else if p == topic {
			return true
		}
	}
	return false
}

// maxTopicLen is the longest topic accepted: RabbitMQ's routing key limit
// (Kafka's 249 is checked by its adapter).
const maxTopicLen = 255

// validTopic accepts 1 to 255 bytes of printable ASCII other than space,
// '/', '*' and '%'. Brokers restrict further; their adapters say so.
func validTopic(t string) error {
	if t == "" || len(t) > maxTopicLen {
		return fmt.Errorf("a topic is 1 to %d bytes", maxTopicLen)
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c >= 0x7f || c == '/' || c == '*' || c == '%' {
			return fmt.Errorf("a topic is printable ASCII without space, '/', '*' or '%%'")
		}
	}
	return nil
}

// zoneKey says what a zone counts per.
type zoneKey struct {
	kind   string // "token", "addr", "header", "global"
	header string
}

func parseZoneKey(s string) (zoneKey, error) {
	switch s {
	case "token", "addr", "global":
		return zoneKey{kind: s}, nil
	}
	if h, ok := strings.CutPrefix(s, "header:"); ok && h != "" && !strings.ContainsAny(h, " :\t") {
		if strings.EqualFold(h, "Authorization") {
			return zoneKey{}, fmt.Errorf("key header:Authorization would keep secrets in memory; use key \"token\"")
		}
		return zoneKey{kind: "header", header: h}, nil
	}
	return zoneKey{}, fmt.Errorf("key %q: want token, addr, global or header:<Name>", s)
}
