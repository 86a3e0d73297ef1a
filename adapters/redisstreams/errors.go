package redisstreams

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// kindOf classifies an error from go-redis or Redis.
func kindOf(err error) semantics.Kind {
	if k := driver.KindOf(err); k != semantics.Unknown {
		return k
	}
	var ne net.Error
	switch {
	case errors.Is(err, redis.ErrClosed):
		return semantics.Closed
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return semantics.Canceled
	case errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted),
		errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE):
		return semantics.Transient
	}
	var re redis.Error
	if errors.As(err, &re) {
		return replyKind(re.Error())
	}
	return semantics.Unknown
}

// replyKind classifies a Redis error reply by its code (the first word).
func replyKind(msg string) semantics.Kind {
	code, _, _ := strings.Cut(msg, " ")
	switch code {
	case "NOGROUP":
		return semantics.NotFound
	case "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "MOVED", "ASK", "OOM",
		"UNBLOCKED": // a blocking read cut short when the server became a replica
		return semantics.Transient
	case "NOPERM", "WRONGPASS", "NOAUTH", "WRONGTYPE", "ERR", "NOSCRIPT", "CROSSSLOT":
		return semantics.Permanent
	}
	if strings.Contains(msg, "max number of clients") {
		return semantics.Transient
	}
	return semantics.Permanent
}

// wrap returns err as a *driver.Error of its kind, or nil.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var de *driver.Error
	if errors.As(err, &de) {
		return err
	}
	return &driver.Error{Kind: kindOf(err), Op: op, Err: err}
}

// invalid returns an InvalidArgument error for op.
func invalid(op, format string, args ...any) error {
	return driver.Errorf(semantics.InvalidArgument, op, format, args...)
}

// isNoGroup reports whether err is Redis's NOGROUP reply (the group or the
// stream does not exist).
func isNoGroup(err error) bool {
	return redis.HasErrorPrefix(err, "NOGROUP")
}

// isNoKey reports whether err is the reply of XINFO on a missing stream.
func isNoKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}
