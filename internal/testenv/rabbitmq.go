package testenv

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultAMQPURL is the RabbitMQ server the tests use when QUEUEKIT_AMQP_URL
// is unset: the local server with the default guest account.
const DefaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// RabbitMQ returns the AMQP URL of a reachable RabbitMQ server:
// QUEUEKIT_AMQP_URL, or DefaultAMQPURL. When the server does not answer,
// t is skipped (failed under CI=true) with a message that says how to
// start it.
func RabbitMQ(t testing.TB) string {
	t.Helper()
	raw := Env("QUEUEKIT_AMQP_URL", DefaultAMQPURL)
	addr, err := amqpAddr(raw)
	if err == nil {
		err = Reachable(addr, 2*time.Second)
	}
	if err != nil {
		Unavailable(t, "RabbitMQ", err,
			"start it with `rabbitmq-server -detached` (the port answers ~5 s later) or run `make test`, "+
				"or point QUEUEKIT_AMQP_URL at a server (amqp://user:pass@host:port/vhost)")
	}
	return raw
}

// amqpAddr returns host:port of an amqp:// or amqps:// URL without ever
// echoing its credentials.
func amqpAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("QUEUEKIT_AMQP_URL is not a valid URL")
	}
	port := "5672"
	switch u.Scheme {
	case "amqp":
	case "amqps":
		port = "5671"
	default:
		return "", fmt.Errorf("QUEUEKIT_AMQP_URL scheme %q is not amqp or amqps", u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		host = "127.0.0.1"
	}
	if p := u.Port(); p != "" {
		port = p
	}
	return net.JoinHostPort(host, port), nil
}

// DeleteRabbitMQ deletes queues, then exchanges, on the server at amqpURL,
// logging what it cannot delete rather than failing: tests call it from
// t.Cleanup so that the shared server does not fill up with their names.
// For each group queue "<topic>.<group>" (or delay queue
// "<topic>.<group>.qk-delay-<ms>ms") it also deletes the topic's topology
// registry, "<topic>.qk-topology", which the RabbitMQ adapter declares
// beside the queues (tests use topics of their own; a test that shares a
// topic with another should delete with the adapter's DeleteTopic instead).
func DeleteRabbitMQ(t testing.TB, amqpURL string, queues, exchanges []string) {
	t.Helper()
	if len(queues) == 0 && len(exchanges) == 0 {
		return
	}
	queues = withRegistries(queues)
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	del := func(kind, name string, f func(*amqp.Channel) error) {
		ch, err := conn.Channel() // a failed delete closes its channel
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer ch.Close()
		if err := f(ch); err != nil {
			t.Logf("cleanup: delete %s %s: %v", kind, name, err)
		}
	}
	for _, q := range queues {
		del("queue", q, func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
	}
	for _, x := range exchanges {
		del("exchange", x, func(ch *amqp.Channel) error { return ch.ExchangeDelete(x, false, false) })
	}
}

// withRegistries returns queues followed by the topology registries of the
// topics they belong to (see DeleteRabbitMQ).
func withRegistries(queues []string) []string {
	const registry, delay = ".qk-topology", ".qk-delay-"
	all := append([]string(nil), queues...)
	seen := make(map[string]bool, len(queues))
	for _, q := range queues {
		seen[q] = true
	}
	for _, q := range queues {
		if strings.HasSuffix(q, registry) {
			continue
		}
		if i := strings.Index(q, delay); i >= 0 {
			q = q[:i]
		}
		i := strings.LastIndexByte(q, '.')
		if i <= 0 {
			continue
		}
		if r := q[:i] + registry; !seen[r] {
			seen[r] = true
			all = append(all, r)
		}
	}
	return all
}
