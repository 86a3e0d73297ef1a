package semantics

import "fmt"

// Kind classifies an error so that callers and middleware decide what to do
// with it (retry, dead-letter, give up) without knowing the broker.
type Kind int

const (
	// Unknown is an error that carries no kind.
	Unknown Kind = iota
	// Transient errors may succeed when tried again: timeouts, a dropped
	// connection, a throttled request.
	Transient
	// Permanent errors fail the same way every time; retrying is useless.
	Permanent
	// InvalidArgument: the caller passed something wrong (a malformed URL,
	// an unknown parameter, a message over the size limit).
	InvalidArgument
	// NotFound: a topic, queue or subscription does not exist.
	NotFound
	// Closed: the publisher, subscriber or broker was closed.
	Closed
	// Unsupported: the adapter cannot do what was asked.
	Unsupported
	// Canceled: the caller's context ended (cancelled or past its
	// deadline) before the operation finished. errors.Is matches the
	// context's own error too.
	Canceled
)

var kindNames = [...]string{
	Unknown:         "unknown",
	Transient:       "transient",
	Permanent:       "permanent",
	InvalidArgument: "invalid argument",
	NotFound:        "not found",
	Closed:          "closed",
	Unsupported:     "unsupported",
	Canceled:        "canceled",
}

// String returns the kind's name, such as "transient".
func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}
