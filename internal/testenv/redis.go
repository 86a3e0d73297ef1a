package testenv

import (
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
