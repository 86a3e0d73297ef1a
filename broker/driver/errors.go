package driver

import (
	"errors"
	"fmt"
	"strings"

	"github.com/queuekit/queuekit/semantics"
)

// Error is the error type of queuekit and its adapters: what was being done
// (Op, such as "kafka: publish"), the Kind of failure and the cause.
type Error struct {
	Kind semantics.Kind
	Op   string
	Err  error
}

// Error returns "op: cause".
func (e *Error) Error() string {
	if e.Op == "" {
		return e.Err.Error()
	}
	return e.Op + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error of kind for op with a formatted cause; %w works.
func Errorf(kind semantics.Kind, op, format string, args ...any) error {
	return &Error{Kind: kind, Op: op, Err: fmt.Errorf(format, args...)}
}

// WrapError returns err as an *Error of kind for op, or nil if err is nil.
// An err that already has a kind keeps it.
func WrapError(kind semantics.Kind, op string, err error) error {
	if err == nil {
		return nil
	}
	if k := KindOf(err); k != semantics.Unknown {
		kind = k
	}
	return &Error{Kind: kind, Op: op, Err: err}
}

// KindOf returns the kind of the first error in err's chain that has one, or
// Unknown.
func KindOf(err error) semantics.Kind {
	for err != nil {
		switch e := err.(type) {
		case *Error:
			if e.Kind != semantics.Unknown {
				return e.Kind
			}
		case interface{ Kind() semantics.Kind }:
			if k := e.Kind(); k != semantics.Unknown {
				return k
			}
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				if k := KindOf(inner); k != semantics.Unknown {
					return k
				}
			}
			return semantics.Unknown
		default:
			return semantics.Unknown
		}
	}
	return semantics.Unknown
}

var (
	// ErrClosed is returned by every operation on a closed publisher,
	// subscriber or broker.
	ErrClosed = &Error{Kind: semantics.Closed, Op: "queuekit", Err: errors.New("closed")}
	// ErrAlreadySettled is returned by Nack after Ack, or Ack after Nack.
	// Settling twice the same way returns nil.
	ErrAlreadySettled = &Error{Kind: semantics.InvalidArgument, Op: "queuekit", Err: errors.New("delivery already settled the other way")}
	// ErrTooLarge matches (errors.Is) every *TooLargeError.
	ErrTooLarge = errors.New("message too large")
	// ErrNoGroup is matched (errors.Is) by the error of a Publish to a
	// topic on which no group was declared: the message would reach no
	// one, so it is refused on every broker rather than dropped or parked.
	ErrNoGroup = &Error{Kind: semantics.NotFound, Op: "queuekit", Err: errors.New("no group declared on the topic (declare one with Broker.Declare, or subscribe first)")}
)

// Canceled returns the error of an operation op whose ctx ended: of kind
// semantics.Canceled, matching ctx.Err() with errors.Is.
func Canceled(op string, ctxErr error) error {
	return &Error{Kind: semantics.Canceled, Op: op, Err: ctxErr}
}

// TooLargeError is returned, before any I/O, for a message over the
// adapter's size limit.
type TooLargeError struct {
	ID        string
	Size, Max int
}

// Error says which message is how large, and the limit.
func (e *TooLargeError) Error() string {
	return fmt.Sprintf("message %s is %d bytes, over the limit of %d", e.ID, e.Size, e.Max)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// PublishError reports which messages of a batch failed. The others were
// durably accepted.
type PublishError struct {
	Failed []PublishFailure
}

// PublishFailure is one failed message of a batch: its index in the Publish
// call, its ID and why.
type PublishFailure struct {
	Index int
	ID    string
	Err   error
}

// Error counts the failed messages and names the first three.
func (e *PublishError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d message(s) not published", len(e.Failed))
	for i, f := range e.Failed {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Failed)-3)
			break
		}
		fmt.Fprintf(&b, "; #%d (id %s): %v", f.Index, f.ID, f.Err)
	}
	return b.String()
}

// Unwrap returns the per-message errors.
func (e *PublishError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f.Err
	}
	return errs
}
