package broker

import (
	"errors"
	"time"

	"github.com/queuekit/queuekit/semantics"
)

// Permanent marks err as permanent: retrying it is useless, so the retry
// middleware gives up and the dlq middleware dead-letters the message.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: semantics.Permanent, Err: err}
}

// IsPermanent reports whether err's chain has the Permanent kind.
func IsPermanent(err error) bool { return KindOf(err) == semantics.Permanent }

// RetryAfter wraps a handler error to ask that the message be redelivered no
// sooner than delay (Consume passes delay to Nack).
func RetryAfter(err error, delay time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{err: err, delay: delay}
}

type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryDelay returns the delay that RetryAfter attached to err's chain.
func RetryDelay(err error) (time.Duration, bool) {
	var r *retryAfterError
	if errors.As(err, &r) {
		return r.delay, true
	}
	return 0, false
}
