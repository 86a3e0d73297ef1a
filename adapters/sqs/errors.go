package sqs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/aws/smithy-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// kindOf classifies an error from the AWS SDK.
func kindOf(err error) semantics.Kind {
	if k := driver.KindOf(err); k != semantics.Unknown {
		return k
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return codeKind(ae.ErrorCode(), ae.ErrorFault() == smithy.FaultServer)
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne),
		// A connection that broke mid-response: the request may or may
		// not have been carried out, and trying again is the remedy.
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return semantics.Transient
	case errors.Is(err, context.Canceled):
		return semantics.Unknown
	}
	// Connection refused and the like arrive as *smithy.OperationError
	// wrapping a *net.OpError, caught above; what is left is unknown.
	return semantics.Unknown
}

// codeKind classifies an SQS or SNS error code, from a whole request or a
// batch entry.
func codeKind(code string, serverFault bool) semantics.Kind {
	switch code {
	case "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NotFound", "ResourceNotFoundException":
		return semantics.NotFound
	case "Throttling", "ThrottlingException", "RequestThrottled", "OverLimit", "KmsThrottled",
		"ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeout", "Throttled":
		return semantics.Transient
	case "InvalidParameterValue", "InvalidParameter", "MissingParameter", "InvalidMessageContents",
		"BatchRequestTooLong", "InvalidAttributeName", "InvalidAttributeValue", "InvalidBatchEntryId",
		"TooManyEntriesInBatchRequest", "BatchEntryIdsNotDistinct", "EmptyBatchRequest",
		"InvalidParameterException", "ValidationException":
		return semantics.InvalidArgument
	case "ReceiptHandleIsInvalid", "InvalidReceiptHandle", "MessageNotInflight", "AccessDenied",
		"AccessDeniedException", "AuthorizationError", "InvalidClientTokenId", "SignatureDoesNotMatch",
		"UnrecognizedClientException", "InvalidSecurity", "KMSAccessDenied", "KmsAccessDenied":
		return semantics.Permanent
	}
	if serverFault {
		return semantics.Transient
	}
	return semantics.Permanent
}

// wrap returns err from the SDK as a *driver.Error of its kind.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return &driver.Error{Kind: kindOf(err), Op: op, Err: err}
}

// entryError is the error of one failed batch entry.
func entryError(op, code, msg string, senderFault bool) error {
	return &driver.Error{Kind: codeKind(code, !senderFault), Op: op, Err: fmt.Errorf("%s: %s", code, msg)}
}

// noGroup is the NotFound error of a queue or SNS topic that does not
// exist (or has no subscription), matching driver.ErrNoGroup: a message
// sent there would reach no group.
func noGroup(op, format string, args ...any) error {
	return &driver.Error{Kind: semantics.NotFound, Op: op, Err: fmt.Errorf(format+": %w", append(args, driver.ErrNoGroup)...)}
}
