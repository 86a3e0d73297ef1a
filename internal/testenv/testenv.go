// Package testenv finds or starts the brokers and stores that queuekit's
// tests talk to: kfake (Kafka protocol), fauxqs (SQS/SNS), pstest (Pub/Sub),
// RabbitMQ, Redis, PostgreSQL and MariaDB. Each lives in its own file.
//
// A service that cannot be reached makes the test skip with a message that
// says how to provide it, except under CI=true, where it fails: CI must
// never report a skipped broker as a pass.
package testenv

import (
	"net"
	"os"
	"testing"
	"time"
)

// CI reports whether the tests run under CI (CI=true), where a missing
// service is a failure, not a skip.
func CI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips t — or fails it under CI=true — because service is not
// reachable; how says what provides it.
func Unavailable(t testing.TB, service string, cause error, how string) {
	t.Helper()
	msg := service + " is not available (" + errString(cause) + "); " + how
	if CI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Reachable reports whether a TCP connection to addr opens within timeout.
func Reachable(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	return c.Close()
}

// Env returns the environment variable name, or def when it is unset.
func Env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func errString(err error) string {
	if err == nil {
		return "unknown reason"
	}
	return err.Error()
}
