package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// kindOf classifies a franz-go or Kafka error.
func kindOf(err error) semantics.Kind {
	var ke *kerr.Error
	switch {
	case err == nil:
		return semantics.Unknown
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return semantics.Transient
	case errors.Is(err, kgo.ErrClientClosed):
		return semantics.Closed
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge),
		errors.Is(err, kerr.InvalidTopicException), errors.Is(err, kerr.InvalidRecord),
		errors.Is(err, kerr.InvalidPartitions), errors.Is(err, kerr.InvalidReplicationFactor),
		errors.Is(err, kerr.InvalidConfig):
		return semantics.InvalidArgument
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		return semantics.NotFound
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.GroupAuthorizationFailed),
		errors.Is(err, kerr.ClusterAuthorizationFailed), errors.Is(err, kerr.TransactionalIDAuthorizationFailed),
		errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.UnsupportedVersion):
		return semantics.Permanent
	case errors.As(err, &ke):
		if ke.Retriable {
			return semantics.Transient
		}
		return semantics.Permanent
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return semantics.Transient
	}
	return semantics.Unknown
}

// wrap returns err as a *driver.Error with the kind kindOf finds.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if k := driver.KindOf(err); k != semantics.Unknown {
		return &driver.Error{Kind: k, Op: op, Err: err}
	}
	return &driver.Error{Kind: kindOf(err), Op: op, Err: err}
}

func errf(kind semantics.Kind, op, format string, args ...any) error {
	return &driver.Error{Kind: kind, Op: op, Err: fmt.Errorf(format, args...)}
}

// maxTopicLen is Kafka's limit on a topic name's length.
const maxTopicLen = 249

// checkTopic applies Kafka's rules for topic names: 1 to 249 characters
// among ASCII letters, digits, '.', '_' and '-', and not "." or "..".
func checkTopic(op, topic string) error {
	switch {
	case topic == "":
		return errf(semantics.InvalidArgument, op, "topic is required")
	case len(topic) > maxTopicLen:
		return errf(semantics.InvalidArgument, op, "topic %.40q... is %d characters long; Kafka allows %d", topic, len(topic), maxTopicLen)
	case topic == "." || topic == "..":
		return errf(semantics.InvalidArgument, op, "topic %q is not a legal Kafka topic name", topic)
	}
	for i := 0; i < len(topic); i++ {
		if !legalNameByte(topic[i]) {
			return errf(semantics.InvalidArgument, op, "topic %q: Kafka topic names use only ASCII letters, digits, '.', '_' and '-'", topic)
		}
	}
	return nil
}

// maxGroupLen is the longest string the Kafka protocol carries (an int16
// length).
const maxGroupLen = 1<<15 - 1

// checkGroup applies Kafka's rules for consumer group IDs: not empty, and
// short enough for the protocol. A group that names a retry topic is
// checked further (checkRetryGroup).
func checkGroup(op, group string) error {
	switch {
	case group == "":
		return errf(semantics.InvalidArgument, op, "group is required")
	case len(group) > maxGroupLen:
		return errf(semantics.InvalidArgument, op, "group %.40q... is %d bytes long; Kafka allows %d", group, len(group), maxGroupLen)
	}
	return nil
}

func legalNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
}

// checkHostPort checks a seed broker address: host:port with a port in
// [1, 65535].
func checkHostPort(hostport string) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not in [1, 65535]", port)
	}
	return nil
}
