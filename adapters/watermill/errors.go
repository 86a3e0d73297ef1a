package watermill

import (
	"context"
	"errors"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// ErrExpired is returned by Ack on a delivery the bridge already gave back
// to Watermill with a Nack: its SubscriberOptions.AckTimeout passed, or its
// subscriber was closed. The message is (or will be) delivered again; the
// Ack does nothing.
var ErrExpired = &driver.Error{Kind: semantics.Permanent, Op: "watermill: ack", Err: errors.New("delivery expired (ack timeout or subscriber closed): the message was nacked for redelivery")}

// within runs fn, which cannot be cancelled, and returns its error, or a
// Transient error when ctx ends first (fn then finishes in the background).
func within(ctx context.Context, op string, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return driver.WrapError(semantics.Unknown, op, err)
	case <-ctx.Done():
		return driver.Errorf(semantics.Transient, op, "gave up waiting: %w", ctx.Err())
	}
}

// unsupported is the refusal of a subscription the backend cannot honour.
func unsupported(op, format string, args ...any) error {
	return driver.Errorf(semantics.Unsupported, op, format, args...)
}
