package nats

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// kindOf classifies an error from nats.go, JetStream or the network.
func kindOf(err error) semantics.Kind {
	if k := driver.KindOf(err); k != semantics.Unknown {
		return k
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamNotFound, jetstream.JSErrCodeConsumerNotFound, jetstream.JSErrCodeMessageNotFound:
			return semantics.NotFound
		case jetstream.JSErrCodeBadRequest, jetstream.JSErrCodeStreamMessageExceedsMaximum,
			jetstream.JSErrCodeStreamNameInUse, jetstream.JSErrCodeConsumerNameExists:
			return semantics.InvalidArgument
		case jetstream.JSErrCodeJetStreamNotEnabled, jetstream.JSErrCodeJetStreamNotEnabledForAccount:
			return semantics.Unsupported
		}
		switch {
		case apiErr.Code == 404:
			return semantics.NotFound
		case apiErr.Code >= 500 || apiErr.Code == 408:
			return semantics.Transient
		case apiErr.Code >= 400:
			return semantics.Permanent
		}
		return semantics.Transient
	}
	var unknownCA x509.UnknownAuthorityError
	var invalidCert x509.CertificateInvalidError
	var hostname x509.HostnameError
	if errors.As(err, &unknownCA) || errors.As(err, &invalidCert) || errors.As(err, &hostname) {
		return semantics.Permanent // the server's certificate is not trusted: a setting, not a hiccup
	}
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrConsumerNotFound),
		errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
		return semantics.NotFound
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadHeaderMsg), errors.Is(err, nats.ErrBadSubject),
		errors.Is(err, jetstream.ErrInvalidSubject), errors.Is(err, jetstream.ErrInvalidStreamName),
		errors.Is(err, jetstream.ErrInvalidConsumerName):
		return semantics.InvalidArgument
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, jetstream.ErrJetStreamPublisherClosed):
		return semantics.Closed
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked),
		errors.Is(err, nats.ErrPermissionViolation), errors.Is(err, nats.ErrAccountAuthExpired):
		return semantics.Permanent
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return semantics.Unsupported
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return semantics.Canceled
	}
	return semantics.Transient // timeouts, a dropped connection, "no heartbeat"
}

// wrap returns err as a *driver.Error of its kind for op.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*driver.Error); ok && e.Op != "" {
		return err
	}
	return &driver.Error{Kind: kindOf(err), Op: op, Err: err}
}

// noStream is the error of a publish to a subject that no stream
// captures: no group can receive it.
func noStream(op, topic string, cause error) error {
	return &driver.Error{Kind: semantics.NotFound, Op: op,
		Err: fmt.Errorf("no JetStream stream captures subject %q (%v): %w", topic, cause, driver.ErrNoGroup)}
}

// isNoStream reports whether a publish failed because no stream captures
// its subject.
func isNoStream(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}
