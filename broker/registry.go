package broker

import (
	"context"
	"errors"
	"net/url"
	"strings"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Open connects to the broker that rawURL names, by its scheme: mem://,
// kafka://, amqp://, sqs://, gcppubsub://, nats://, redis+streams://. The
// adapter must be registered, usually by a blank import of its package (or
// of adapters/all). A URL that is not scheme://... is refused before
// anything is dialled, and errors never show the URL's password.
func Open(ctx context.Context, rawURL string) (*Broker, error) {
	const op = "queuekit: open"
	u, err := url.Parse(rawURL)
	if err != nil || !strings.Contains(rawURL, "://") || u.Opaque != "" {
		return nil, Errorf(semantics.InvalidArgument, op, "malformed URL %s (want scheme://[user:password@]host[:port][/path][?params])", driver.Redact(rawURL))
	}
	if strings.Contains(u.Path, "@") {
		return nil, Errorf(semantics.InvalidArgument, op, "malformed URL %s: an @ in the path (a password with a / in it must be percent-encoded as %%2F)", driver.Redact(rawURL))
	}
	o := driver.Lookup(u.Scheme)
	if o == nil {
		return nil, Errorf(semantics.InvalidArgument, op,
			"no adapter for scheme %q in %s (registered: %s; blank-import the adapter package, or github.com/queuekit/queuekit/adapters/all)",
			u.Scheme, driver.Redact(rawURL), strings.Join(driver.Schemes(), ", "))
	}
	d, err := o.Open(ctx, u)
	if err != nil {
		return nil, redactError(err, u)
	}
	if d == nil {
		return nil, Errorf(semantics.Unknown, op, "the %s adapter returned no broker and no error", u.Scheme)
	}
	return New(d), nil
}

// Schemes returns the URL schemes of the adapters linked in, sorted.
func Schemes() []string { return driver.Schemes() }

// Redact returns rawURL with its password and secret parameters replaced by
// "xxxxx", even when rawURL does not parse.
func Redact(rawURL string) string { return driver.Redact(rawURL) }

// redactError makes sure no password from u survives in err's text.
func redactError(err error, u *url.URL) error {
	pw, ok := u.User.Password()
	if !ok || pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	// The cause is not kept: unwrapping it would show the password again.
	return &Error{Kind: KindOf(err), Op: "queuekit: open", Err: errors.New(strings.ReplaceAll(err.Error(), pw, "xxxxx"))}
}
