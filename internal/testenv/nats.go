package testenv

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// DefaultNATSURL is the NATS server (with JetStream) the tests use when
// QUEUEKIT_NATS_URL is unset.
const DefaultNATSURL = "nats://127.0.0.1:4222"

// NATS returns the URL of a reachable NATS server: QUEUEKIT_NATS_URL, or
// DefaultNATSURL. When it does not answer, t is skipped (failed under
// CI=true) with a message that says how to start it. Tests share the
// server: give every stream (topic) a name of the test's own and delete it
// afterwards.
func NATS(t testing.TB) string {
	t.Helper()
	raw := Env("QUEUEKIT_NATS_URL", DefaultNATSURL)
	addr, err := natsAddr(raw)
	if err == nil {
		err = Reachable(addr, 2*time.Second)
	}
	if err != nil {
		Unavailable(t, "NATS", err,
			"start it with `start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server` "+
				"(JetStream on, -js) or run `make services`, or point QUEUEKIT_NATS_URL at a server (nats://[user:pass@]host:port)")
	}
	return raw
}

// natsAddr returns host:port of a nats:// URL without echoing credentials.
func natsAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("QUEUEKIT_NATS_URL is not a valid URL")
	}
	if u.Scheme != "nats" {
		return "", fmt.Errorf("QUEUEKIT_NATS_URL scheme %q is not nats", u.Scheme)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "4222"
	}
	return net.JoinHostPort(host, port), nil
}

// NATSCLIVersion is the natscli release NATSCLI builds.
const NATSCLIVersion = "v0.5.1"

var (
	natsCLIOnce sync.Once
	natsCLIPath string
	natsCLIErr  error
)

// NATSCLI returns the path of the `nats` command-line tool, for interop
// tests: QUEUEKIT_NATS_CLI, else a binary built once from
// github.com/nats-io/natscli/nats@NATSCLIVersion through the Go module
// proxy into the user cache directory (the first build takes a minute or
// two). When it cannot be had, t is skipped (failed under CI=true).
func NATSCLI(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("QUEUEKIT_NATS_CLI"); p != "" {
		return p
	}
	natsCLIOnce.Do(func() { natsCLIPath, natsCLIErr = buildNATSCLI() })
	if natsCLIErr != nil {
		Unavailable(t, "the nats command-line tool", natsCLIErr,
			"let `go install github.com/nats-io/natscli/nats@"+NATSCLIVersion+"` reach the Go module proxy, "+
				"or point QUEUEKIT_NATS_CLI at a nats binary")
	}
	return natsCLIPath
}

func buildNATSCLI() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "queuekit", "natscli-"+NATSCLIVersion)
	bin := filepath.Join(dir, "nats")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/nats-io/natscli/nats@"+NATSCLIVersion)
	cmd.Dir = os.TempDir() // outside any module: go.mod stays as it is
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install natscli %s: %v: %s", NATSCLIVersion, err, tail(out, 400))
	}
	return bin, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// NATSProcess is a nats-server with JetStream that a test owns (its own
// port and store directory), for tests that restart the server: Restart
// stops it and starts it again on the same port with the same store, so
// what JetStream stored survives.
type NATSProcess struct {
	// URL is nats://127.0.0.1:port.
	URL string
	process
}

// NATSServer starts a nats-server of the test's own — the binary on PATH
// or /usr/sbin/nats-server — with JetStream on a free loopback port and a
// store directory in t.TempDir(); it is stopped when t ends. Without the
// binary, t is skipped (failed under CI=true).
func NATSServer(t testing.TB) *NATSProcess {
	t.Helper()
	return NATSServerWith(t, "nats")
}

// NATSServerWith is NATSServer with extra nats-server arguments (a -c
// config file for accounts and NKeys, --tls and its files...); scheme is
// the URL scheme of NATSProcess.URL ("nats", or "tls" for a server that
// requires TLS).
func NATSServerWith(t testing.TB, scheme string, args ...string) *NATSProcess {
	t.Helper()
	bin := findServer(t, "nats-server", "/usr/sbin/nats-server", "nats-server")
	port := freePort(t)
	p := &NATSProcess{
		URL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, port),
		process: process{name: "nats-server", addr: fmt.Sprintf("127.0.0.1:%d", port), bin: bin,
			args: append([]string{"-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir()}, args...)},
	}
	p.run(t)
	return p
}
