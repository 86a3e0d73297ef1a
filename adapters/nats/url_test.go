package nats

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func parse(t *testing.T, raw string) (*config, error) {
	t.Helper()
	return parseRaw(raw)
}

func parseRaw(raw string) (*config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	return parseParsedURL(u)
}

func TestURLParameters(t *testing.T) {
	cfg, err := parse(t, "nats://u:p@h:4333?ack_wait=2s&max_ack_pending=7&prefetch=9&publish_window=11&publish_timeout=3s"+
		"&storage=memory&replicas=3&retention=interest&max_age=1h&domain=hub&connect_timeout=2s&reconnect_wait=1s&name=app&tls=true")
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.opts
	want := Options{AckWait: 2 * time.Second, MaxAckPending: 7, Prefetch: 9, PublishWindow: 11, PublishTimeout: 3 * time.Second,
		Storage: jetstream.MemoryStorage, Replicas: 3, Retention: Interest, MaxAge: time.Hour, Domain: "hub"}
	if o != want {
		t.Errorf("options = %+v\nwant      %+v", o, want)
	}
	if cfg.server != "nats://h:4333" {
		t.Errorf("server = %q, want nats://h:4333 (no credentials)", cfg.server)
	}
	if strings.Contains(cfg.redacted, ":p@") {
		t.Errorf("redacted URL %q shows the password", cfg.redacted)
	}
	def, err := parse(t, "nats://")
	if err != nil {
		t.Fatal(err)
	}
	if def.server != "nats://127.0.0.1:4222" || def.opts.AckWait != DefaultAckWait || def.opts.Storage != jetstream.FileStorage ||
		def.opts.Retention != Limits || def.opts.Replicas != 1 || def.opts.PublishWindow != DefaultPublishWindow {
		t.Errorf("defaults: server %q, options %+v", def.server, def.opts)
	}
}

// TestURLErrors: every parameter out of range, malformed or in a bad
// combination is an InvalidArgument error before any I/O, and no error
// shows a credential.
func TestURLErrors(t *testing.T) {
	seed := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seed, []byte("not a seed"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ url, want string }{
		{"nats://h?ack_wiat=1s", "unknown URL parameter(s) ack_wiat (valid: ack_wait,"},
		{"nats://h?ack_wait=-1s", "ack_wait=-1s must not be negative"},
		{"nats://h?ack_wait=0s", "ack_wait=0s is out of range [1ms, 24h0m0s]"},
		{"nats://h?ack_wait=25h", "ack_wait=25h0m0s is out of range"},
		{"nats://h?ack_wait=soon", `ack_wait="soon" is not a duration`},
		{"nats://h?max_ack_pending=0", "max_ack_pending=0 is out of range [1, 1048576]"},
		{"nats://h?max_ack_pending=-1", "max_ack_pending=-1 is out of range"},
		{"nats://h?prefetch=65537", "prefetch=65537 is out of range [1, 65536]"},
		{"nats://h?prefetch=many", `prefetch="many" is not an integer`},
		{"nats://h?publish_window=0", "publish_window=0 is out of range [1, 65536]"},
		{"nats://h?publish_timeout=0s", "publish_timeout=0s is out of range [1ms, 1h]"},
		{"nats://h?publish_timeout=2h", "publish_timeout=2h0m0s is out of range"},
		{"nats://h?storage=disk", `storage="disk" is not one of file, memory`},
		{"nats://h?replicas=0", "replicas=0 is out of range [1, 5]"},
		{"nats://h?replicas=7", "replicas=7 is out of range [1, 5]"},
		{"nats://h?retention=workqueue", `retention="workqueue" is not one of limits, interest`},
		{"nats://h?max_age=10ms", "max_age=10ms must be 0 (no limit) or at least 100ms"},
		{"nats://h?max_age=-1h", "max_age=-1h0m0s must not be negative"},
		{"nats://h?domain=a.b", "parameter domain=\"a.b\" is not a valid JetStream domain"},
		{"nats://h?connect_timeout=0s", "connect_timeout=0s is out of range (0, 5m]"},
		{"nats://h?connect_timeout=1h", "connect_timeout=1h0m0s is out of range"},
		{"nats://h?reconnect_wait=0s", "reconnect_wait=0s is out of range [1ms, 1m]"},
		{"nats://h?tls=maybe", `tls="maybe" is not a boolean`},
		{"nats://h?tls_cert=/c.pem", "tls_cert and tls_key go together"},
		{"nats://h?creds=/a.creds&nkey=/b.nk", "creds (a JWT and its seed in one file) excludes jwt and nkey"},
		{"nats://h?jwt=/a.jwt", "jwt needs nkey"},
		{"nats://user:s3cret@h?creds=/a.creds", "credentials in the URL's user part exclude creds"},
		{"nats://h:0", "port 0 is out of range [1, 65535]"},
		{"nats://h:65536", "port 65536 is out of range [1, 65535]"},
		{"nats://h/path", "a nats URL is nats://"},
		{"kafka://h", "scheme must be nats"},
		{"nats://h?nkey=" + seed, "parameter nkey: cannot read the seed file"},
		{"nats://user:s3cret@h?storage=tape", `storage="tape" is not one of file, memory`},
	} {
		_, err := Open(context.Background(), tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.want) || broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Open(%s) = %v\nwant an invalid argument error containing %q", tc.url, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "not a seed")) {
			t.Errorf("Open(%s) error shows a secret: %v", tc.url, err)
		}
	}
}

// TestOptionsOutOfRange: the typed constructor checks Options the same
// way, before using the connection.
func TestOptionsOutOfRange(t *testing.T) {
	for _, o := range []Options{
		{AckWait: -time.Second}, {AckWait: time.Microsecond}, {MaxAckPending: -1}, {Prefetch: 1 << 20},
		{PublishWindow: -5}, {PublishTimeout: -time.Second}, {Storage: 7}, {Replicas: 6}, {Retention: "workqueue"},
		{MaxAge: time.Millisecond}, {MaxAge: -time.Hour},
	} {
		if _, err := o.withDefaults(); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("Options %+v: %v, want an invalid argument error", o, err)
		}
	}
	if _, err := New(nil, Options{}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("New(nil) = %v, want an invalid argument error", err)
	}
}

// TestOpenFailsClearly: a closed port is a transient error that names the
// address but never the password, within connect_timeout.
func TestOpenFailsClearly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Open(context.Background(), "nats://app:s3cret@"+addr+"?connect_timeout=2s")
	if err == nil || broker.KindOf(err) != semantics.Transient || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), addr) {
		t.Errorf("Open to a closed port = %v, want a transient error naming %s without the password", err, addr)
	}
	// broker.Open reaches the same opener through the registry.
	_, err = broker.Open(context.Background(), "nats://h?prefetch=0")
	if broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("broker.Open with prefetch=0 = %v, want an invalid argument error", err)
	}
}
