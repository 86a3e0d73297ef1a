package broker

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/semantics"
)

// Driver opens a Broker from a URL. Adapters register one per URL scheme in
// their init function, the way database/sql drivers do.
type Driver interface {
	Open(ctx context.Context, u *url.URL) (Broker, error)
}

// DriverFunc adapts a function to Driver.
type DriverFunc func(ctx context.Context, u *url.URL) (Broker, error)

// Open calls f.
func (f DriverFunc) Open(ctx context.Context, u *url.URL) (Broker, error) { return f(ctx, u) }

var (
	driversMu sync.RWMutex
	drivers   = map[string]Driver{}
)

// Register makes a driver available under scheme (such as "kafka"). It
// panics if the scheme is registered twice or d is nil.
func Register(scheme string, d Driver) {
	driversMu.Lock()
	defer driversMu.Unlock()
	if d == nil {
		panic("queuekit: Register driver is nil")
	}
	if _, dup := drivers[scheme]; dup {
		panic("queuekit: Register called twice for scheme " + scheme)
	}
	drivers[scheme] = d
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	driversMu.RLock()
	defer driversMu.RUnlock()
	s := make([]string, 0, len(drivers))
	for k := range drivers {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open connects to the broker that rawURL names, by its scheme: mem://,
// kafka://, amqp://, sqs://, gcppubsub://. The adapter must be registered,
// usually by a blank import of its package (or of adapters/all). Errors
// never show the URL's password.
func Open(ctx context.Context, rawURL string) (Broker, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, Errorf(semantics.InvalidArgument, "queuekit: open", "malformed URL %s", Redact(rawURL))
	}
	driversMu.RLock()
	d := drivers[u.Scheme]
	driversMu.RUnlock()
	if d == nil {
		return nil, Errorf(semantics.InvalidArgument, "queuekit: open",
			"no adapter for scheme %q in %s (registered: %s; blank-import the adapter package, or github.com/queuekit/queuekit/adapters/all)",
			u.Scheme, u.Redacted(), strings.Join(Schemes(), ", "))
	}
	b, err := d.Open(ctx, u)
	if err != nil {
		return nil, redactError(err, u)
	}
	return b, nil
}

// redactError makes sure no password from u survives in err's text.
func redactError(err error, u *url.URL) error {
	pw, ok := u.User.Password()
	if !ok || pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	return &Error{Kind: KindOf(err), Op: "queuekit: open", Err: redactedError{msg: strings.ReplaceAll(err.Error(), pw, "xxxxx"), err: err}}
}

type redactedError struct {
	msg string
	err error
}

func (e redactedError) Error() string { return e.msg }
func (e redactedError) Unwrap() error { return e.err }

var userinfo = regexp.MustCompile(`(//[^/@:]*):[^/@]*@`)

// Redact returns rawURL with any password replaced by "xxxxx", even when
// rawURL does not parse.
func Redact(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		if _, has := u.User.Password(); !has {
			return rawURL
		}
		return u.Redacted()
	}
	return userinfo.ReplaceAllString(rawURL, "${1}:xxxxx@")
}

// Params reads an adapter's URL query parameters and rejects the ones it
// does not know. Read every parameter through it, then check Err:
//
//	p := broker.NewParams("kafka", u, "group", "partitions")
//	parts := p.Int("partitions", 3)
//	if err := p.Err(); err != nil { ... }
type Params struct {
	op    string
	q     url.Values
	known []string
	errs  []string
}

// NewParams starts reading u's query for the adapter named scheme, which
// knows the parameters listed.
func NewParams(scheme string, u *url.URL, known ...string) *Params {
	return &Params{op: scheme + ": open", q: u.Query(), known: known}
}

// String returns parameter name, or def when it is absent or empty.
func (p *Params) String(name, def string) string {
	p.mustKnow(name)
	if v := p.q.Get(name); v != "" {
		return v
	}
	return def
}

// Int returns parameter name as an int, or def.
func (p *Params) Int(name string, def int) int {
	v := p.String(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		p.errs = append(p.errs, fmt.Sprintf("parameter %s=%q is not an integer", name, v))
		return def
	}
	return n
}

// Bool returns parameter name as a bool (true, false, 1, 0), or def.
func (p *Params) Bool(name string, def bool) bool {
	v := p.String(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.errs = append(p.errs, fmt.Sprintf("parameter %s=%q is not a boolean", name, v))
		return def
	}
	return b
}

// Duration returns parameter name as a time.Duration ("1.5s", "200ms"), or
// def.
func (p *Params) Duration(name string, def time.Duration) time.Duration {
	v := p.String(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.errs = append(p.errs, fmt.Sprintf("parameter %s=%q is not a duration such as 500ms or 2s", name, v))
		return def
	}
	return d
}

// Fail records a problem with a parameter's value, reported by Err.
func (p *Params) Fail(format string, args ...any) {
	p.errs = append(p.errs, fmt.Sprintf(format, args...))
}

// Err reports unknown parameters and values that did not parse, as one
// InvalidArgument error that lists the valid parameters.
func (p *Params) Err() error {
	errs := p.errs
	var unknown []string
	for name := range p.q {
		if !p.isKnown(name) {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		valid := append([]string(nil), p.known...)
		sort.Strings(valid)
		errs = append([]string{fmt.Sprintf("unknown URL parameter(s) %s (valid: %s)",
			strings.Join(unknown, ", "), strings.Join(valid, ", "))}, errs...)
	}
	if len(errs) == 0 {
		return nil
	}
	return Errorf(semantics.InvalidArgument, p.op, "%s", strings.Join(errs, "; "))
}

func (p *Params) isKnown(name string) bool {
	for _, k := range p.known {
		if k == name {
			return true
		}
	}
	return false
}

func (p *Params) mustKnow(name string) {
	if !p.isKnown(name) {
		panic("queuekit: Params read " + name + ", which is not in its known list")
	}
}
