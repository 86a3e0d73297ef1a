package rabbitmq

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// RabbitMQ's rules for names, checked before any I/O: a name that breaks
// them makes RabbitMQ (or amqp091) close the whole connection, failing
// every other publisher or subscriber on it.
const (
	// maxNameLen is the longest exchange name, queue name and routing key
	// (an AMQP shortstr), in bytes of UTF-8.
	maxNameLen = 255
	// maxDelaySuffix is the longest suffix a group's delay queues add to
	// the group's queue name: ".qk-delay-" + up to 10 digits + "ms".
	maxDelaySuffix = len(delayMarker) + 10 + len("ms")
	// maxQueueLen is the longest group queue name, so that its delay
	// queues' names fit too.
	maxQueueLen = maxNameLen - maxDelaySuffix
	// maxFieldName is the longest header name: AMQP 0-9-1 limits table
	// field names to 128 bytes.
	maxFieldName = 128
	// maxShortstr is the longest AMQP short string, such as the
	// message-id property.
	maxShortstr = 255
)

// checkName checks a topic, group, exchange or dead-letter topic: not
// empty, valid UTF-8 without control characters, at most max bytes.
func checkName(op, what, name string, max int) error {
	switch {
	case name == "":
		return driver.Errorf(semantics.InvalidArgument, op, "%s is empty", what)
	case !utf8.ValidString(name):
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q is not valid UTF-8 (RabbitMQ closes the connection on such a name)", what, clip(name))
	case len(name) > max:
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q is %d bytes, over RabbitMQ's limit of %d", what, clip(name), len(name), max)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return driver.Errorf(semantics.InvalidArgument, op, "%s %q contains a control character", what, clip(name))
		}
	}
	return nil
}

// checkQueue checks a queue name the adapter is about to declare for a
// group: RabbitMQ's rules, room for the delay queues' suffix, and none of
// the names the adapter keeps for itself.
func checkQueue(op, what, name string) error {
	if err := checkName(op, what, name, maxNameLen); err != nil {
		return err
	}
	switch {
	case len(name) > maxQueueLen:
		return driver.Errorf(semantics.InvalidArgument, op,
			"%s %q is %d bytes: RabbitMQ allows %d, and the group's delay queues add up to %d (%s<ms>ms), so topic and group may take %d together",
			what, clip(name), len(name), maxNameLen, maxDelaySuffix, delayMarker, maxQueueLen)
	case strings.Contains(name, delayMarker):
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q contains %q, which marks the adapter's delay queues", what, clip(name), delayMarker)
	case strings.HasSuffix(name, registrySuffix):
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q ends with %q, which names the adapter's topology registries", what, clip(name), registrySuffix)
	case strings.HasSuffix(name, activeSuffix):
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q ends with %q, which names the adapter's activity locks", what, clip(name), activeSuffix)
	}
	return nil
}

// maxStreamName is the longest name of a stream queue that works: RabbitMQ
// 3.10 declares a longer one, then never confirms a publish to it (the
// stream's directory name, "__<name>_<timestamp>", is over 255 bytes).
// Kept well under 233.
const maxStreamName = 220

// registryName is the name of topic's topology registry (see topology.go):
// topic + ".qk-topology", or for a topic too long for that, a prefix of it
// and a hash.
func registryName(topic string) string {
	if len(topic)+len(registrySuffix) <= maxStreamName {
		return topic + registrySuffix
	}
	sum := sha256.Sum256([]byte(topic))
	tag := "~" + hex.EncodeToString(sum[:8])
	keep := maxStreamName - len(registrySuffix) - len(tag)
	for keep > 0 && !utf8.RuneStart(topic[keep]) {
		keep--
	}
	return topic[:keep] + tag + registrySuffix
}

// clip shortens a name for an error message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}
