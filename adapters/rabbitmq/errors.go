package rabbitmq

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// kindOf classifies an error from amqp091 or the network.
func kindOf(err error) semantics.Kind {
	if k := broker.KindOf(err); k != semantics.Unknown {
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

// wrap returns err as a *broker.Error of its kind, explaining the AMQP
// errors users meet when topology does not match.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		err = fmt.Errorf("%w (an existing queue or exchange was declared with other arguments: "+
			"queue type, MaxAttempts, DeadLetterTopic and Ordering must match the first subscriber of a group, "+
			"or delete the queue)", err)
	}
	return &broker.Error{Kind: kindOf(err), Op: op, Err: err}
}

// errNotConnected is the cause of a call that found no connection.
var errNotConnected = errors.New("not connected to RabbitMQ")
