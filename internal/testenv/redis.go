package testenv

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// DefaultRedisAddr is the Redis server the tests use when QUEUEKIT_REDIS_ADDR
// is unset.
const DefaultRedisAddr = "127.0.0.1:6379"

// Redis returns the host:port of a reachable Redis server:
// QUEUEKIT_REDIS_ADDR, or DefaultRedisAddr. When it does not answer, t is
// skipped (failed under CI=true) with a message that says how to start it.
// Tests share the server: give every key a prefix of the test's own.
func Redis(t testing.TB) string {
	t.Helper()
	addr := Env("QUEUEKIT_REDIS_ADDR", DefaultRedisAddr)
	if err := Reachable(addr, 2*time.Second); err != nil {
		Unavailable(t, "Redis", err,
			"start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no` or run `make test`, "+
				"or point QUEUEKIT_REDIS_ADDR at a server (host:port)")
	}
	return addr
}

// RedisProcess is a redis-server that a test owns (its own port, and an
// append-only file in its own directory, synced on every write), for tests
// that restart the server: Restart stops it and starts it again on the
// same port with the same append-only file, so what it acknowledged
// survives.
type RedisProcess struct {
	// Addr is 127.0.0.1:port.
	Addr string
	process
}

// RedisServer starts a redis-server of the test's own — the binary on PATH
// or /usr/bin/redis-server — on a free loopback port, with appendonly yes
// and appendfsync always in t.TempDir(), so that what it acknowledged
// survives a Restart; it is stopped when t ends. Without the binary, t is
// skipped (failed under CI=true).
func RedisServer(t testing.TB) *RedisProcess {
	t.Helper()
	bin := findServer(t, "redis-server", "/usr/bin/redis-server", "redis-server")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, port, _ := strings.Cut(addr, ":")
	p := &RedisProcess{Addr: addr, process: process{name: "redis-server", addr: addr, bin: bin,
		args: []string{"--bind", "127.0.0.1", "--port", port, "--dir", t.TempDir(),
			"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"}}}
	p.run(t)
	return p
}
