package pubsub

import (
	"context"
	"errors"

	ps "cloud.google.com/go/pubsub/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// kindOf classifies an error of the Pub/Sub client by its gRPC code.
func kindOf(err error) semantics.Kind {
	var paused ps.ErrPublishingPaused
	switch {
	case err == nil:
		return semantics.Unknown
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return semantics.Transient
	case errors.Is(err, ps.ErrPublisherStopped):
		return semantics.Closed
	case errors.Is(err, ps.ErrOversizedMessage):
		return semantics.InvalidArgument
	case errors.As(err, &paused):
		// An earlier message of the same ordering key failed; the publisher
		// resumes the key, so publishing again may succeed.
		return semantics.Transient
	}
	if k := driver.KindOf(err); k != semantics.Unknown {
		return k
	}
	st, ok := status.FromError(err)
	if !ok {
		return semantics.Unknown
	}
	switch st.Code() {
	case codes.NotFound:
		return semantics.NotFound
	case codes.InvalidArgument, codes.OutOfRange, codes.AlreadyExists:
		return semantics.InvalidArgument
	case codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition:
		return semantics.Permanent
	case codes.Unimplemented:
		return semantics.Unsupported
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted,
		codes.Internal, codes.Unknown, codes.Canceled:
		return semantics.Transient
	}
	return semantics.Unknown
}

// wrap returns err as a *driver.Error for op with its kind, or nil.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return driver.WrapError(kindOf(err), op, err)
}

// isCode reports whether err carries the gRPC code c.
func isCode(err error, c codes.Code) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == c
}
