package driver

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/queuekit/queuekit/semantics"
)

// Params reads an adapter's URL query parameters and rejects the ones it
// does not know. Read every parameter through it, then check Err:
//
//	p := driver.NewParams("kafka", u, "group", "partitions")
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
// def. A negative duration is an error: no adapter parameter means anything
// by one.
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
	if d < 0 {
		p.errs = append(p.errs, fmt.Sprintf("parameter %s=%v must not be negative", name, d))
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

// Enum returns parameter name, which must be one of allowed, or def.
func (p *Params) Enum(name, def string, allowed ...string) string {
	v := p.String(name, def)
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	p.errs = append(p.errs, fmt.Sprintf("parameter %s=%q is not one of %s", name, v, strings.Join(allowed, ", ")))
	return def
}

// IntRange returns parameter name as an int in [lo, hi], or def.
func (p *Params) IntRange(name string, def, lo, hi int) int {
	n := p.Int(name, def)
	if n < lo || n > hi {
		p.errs = append(p.errs, fmt.Sprintf("parameter %s=%d is out of range [%d, %d]", name, n, lo, hi))
		return def
	}
	return n
}
