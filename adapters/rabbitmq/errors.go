package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// kindOf classifies an error from amqp091 or the network.
func kindOf(err error) semantics.Kind {
	if k := driver.KindOf(err); k != semantics.Unknown {
		return k
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.NotFound:
			return semantics.NotFound
		case amqp.PreconditionFailed, amqp.ContentTooLarge, amqp.SyntaxError, amqp.CommandInvalid,
			amqp.NotImplemented:
			return semantics.InvalidArgument
		case amqp.AccessRefused, amqp.NotAllowed:
			return semantics.Permanent
		case amqp.ResourceLocked:
			return semantics.Permanent
		}
		return semantics.Transient // 320 connection-forced, 504 channel-error, 541 internal, resource errors
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return semantics.Transient
	}
	return semantics.Transient // network errors: dial refused, reset, EOF
}

// wrap returns err as a *driver.Error of its kind, explaining the AMQP
// errors users meet when topology does not match. RabbitMQ answers 406
// PRECONDITION_FAILED for other things too (an unknown delivery tag: a
// delivery settled on a channel that is not the one it came on, or twice):
// only a declare that met other arguments ("inequivalent arg") gets the
// topology explanation.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		switch {
		case strings.Contains(ae.Reason, "inequivalent arg"):
			err = fmt.Errorf("%w (an existing queue or exchange was declared with other arguments: "+
				"queue type, MaxAttempts, DeadLetterTopic and Ordering must match the first subscriber of a group, "+
				"or delete the queue)", err)
		case strings.Contains(ae.Reason, "unknown delivery tag"):
			err = fmt.Errorf("%w (the channel no longer knew the delivery: it was settled already, "+
				"or the channel it came on had closed; RabbitMQ closed this channel)", err)
		}
	}
	return &driver.Error{Kind: kindOf(err), Op: op, Err: err}
}

// errNotConnected is the cause of a call that found no connection.
var errNotConnected = errors.New("not connected to RabbitMQ")
