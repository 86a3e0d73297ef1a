package nats

import (
	"strings"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// NATS's rules for names, checked before any I/O.
const (
	// MaxNameLen is the longest topic and group name, in bytes: JetStream
	// limits stream and consumer names to 255, and a topic's stream is
	// named after it.
	MaxNameLen = 255
)

// checkTopic checks that topic is a NATS subject a message can be
// published to, and that its stream name (see StreamName) is valid: dot-
// separated tokens of printable ASCII, none empty, no wildcard ('*', '>')
// or path separator ('/', '\'), not starting with '$' (NATS keeps $JS,
// $SYS... for itself), at most MaxNameLen bytes.
func checkTopic(op, what, topic string) error {
	if err := checkChars(op, what, topic, "*>/\\"); err != nil {
		return err
	}
	switch {
	case topic[0] == '$':
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q starts with '$', which NATS keeps for its own subjects ($JS, $SYS)", what, clip(topic))
	case topic[0] == '.' || topic[len(topic)-1] == '.' || strings.Contains(topic, ".."):
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q has an empty subject token (a leading, trailing or doubled '.')", what, clip(topic))
	}
	return nil
}

// checkGroup checks that group can name a JetStream durable consumer:
// printable ASCII without '.', '*', '>', '/' or '\', at most MaxNameLen
// bytes.
func checkGroup(op, group string) error {
	return checkChars(op, "group", group, ".*>/\\")
}

func checkChars(op, what, name, forbidden string) error {
	switch {
	case name == "":
		return driver.Errorf(semantics.InvalidArgument, op, "%s is empty", what)
	case len(name) > MaxNameLen:
		return driver.Errorf(semantics.InvalidArgument, op, "%s %q is %d bytes, over JetStream's limit of %d", what, clip(name), len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f {
			return driver.Errorf(semantics.InvalidArgument, op, "%s %q: byte %d (%q) is not printable ASCII; NATS %s names are printable ASCII without spaces", what, clip(name), i, c, what)
		}
		if strings.IndexByte(forbidden, c) >= 0 {
			return driver.Errorf(semantics.InvalidArgument, op, "%s %q contains %q, which a NATS %s name cannot (%s)", what, clip(name), c, what, quoteAll(forbidden))
		}
	}
	return nil
}

// StreamName returns the name of the stream the adapter creates for topic
// when no stream captures the topic's subject yet: the topic with each '.'
// made '_' (JetStream stream names cannot contain dots). Two topics that
// differ only there ("a.b" and "a_b") would share a name; the second is
// refused when its stream is created.
func StreamName(topic string) string { return strings.ReplaceAll(topic, ".", "_") }

func quoteAll(chars string) string {
	parts := make([]string, len(chars))
	for i := range chars {
		parts[i] = "'" + chars[i:i+1] + "'"
	}
	return strings.Join(parts, " ")
}

// clip shortens a name for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:61] + "..."
	}
	return s
}

// subjectMatches reports whether subject (no wildcards) matches filter,
// a NATS subject that may hold '*' and '>' tokens.
func subjectMatches(filter, subject string) bool {
	if filter == "" || filter == ">" {
		return true
	}
	for {
		ft, frest, fmore := strings.Cut(filter, ".")
		st, srest, smore := strings.Cut(subject, ".")
		switch {
		case ft == ">":
			return true
		case ft != "*" && ft != st:
			return false
		case !fmore || !smore:
			return fmore == smore
		}
		filter, subject = frest, srest
	}
}
