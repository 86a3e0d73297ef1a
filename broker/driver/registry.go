package driver

import (
	"context"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Opener opens a Broker from a URL. Adapters register one per URL scheme in
// their init function, the way database/sql drivers do. The URL has been
// parsed and checked (scheme://...) by package broker.
type Opener interface {
	Open(ctx context.Context, u *url.URL) (Broker, error)
}

// OpenerFunc adapts a function to Opener.
type OpenerFunc func(ctx context.Context, u *url.URL) (Broker, error)

// Open calls f.
func (f OpenerFunc) Open(ctx context.Context, u *url.URL) (Broker, error) { return f(ctx, u) }

var (
	openersMu sync.RWMutex
	openers   = map[string]Opener{}
)

// Register makes an opener available under scheme (such as "kafka"). It
// panics if the scheme is registered twice or o is nil.
func Register(scheme string, o Opener) {
	openersMu.Lock()
	defer openersMu.Unlock()
	if o == nil {
		panic("queuekit: Register opener is nil")
	}
	if _, dup := openers[scheme]; dup {
		panic("queuekit: Register called twice for scheme " + scheme)
	}
	openers[scheme] = o
}

// Lookup returns the opener registered for scheme, or nil.
func Lookup(scheme string) Opener {
	openersMu.RLock()
	defer openersMu.RUnlock()
	return openers[scheme]
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	openersMu.RLock()
	defer openersMu.RUnlock()
	s := make([]string, 0, len(openers))
	for k := range openers {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

var schemePrefix = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.\-]*:/*`)

// secretParam says whether a query parameter's value is a secret.
func secretParam(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"pass", "secret", "token", "credential", "key_id", "access_key", "nkey", "jwt", "creds"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// Redact returns rawURL fit for an error or a log line: a password, the
// values of query parameters that hold secrets, and — when rawURL does not
// parse as scheme://host... — everything between the scheme and the last
// "@", so that a typo ("amqp:/u:pw@h", "amqp//u:pw@h") or a password with
// a "/" in it is never shown.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err == nil && u.Opaque == "" && !strings.Contains(u.Path, "@") && !strings.Contains(u.Fragment, "@") && strings.Contains(rawURL, "://") {
		changed := false
		if u.RawQuery != "" {
			q := u.Query()
			for k := range q {
				if secretParam(k) {
					q.Set(k, "xxxxx")
					changed = true
				}
			}
			if changed {
				u.RawQuery = q.Encode()
			}
		}
		if _, has := u.User.Password(); !has && !changed {
			return rawURL
		}
		return u.Redacted()
	}
	at := strings.LastIndex(rawURL, "@")
	if at < 0 {
		if i := strings.IndexByte(rawURL, '?'); i >= 0 {
			return rawURL[:i] + "?xxxxx"
		}
		return rawURL
	}
	start := 0
	if m := schemePrefix.FindStringIndex(rawURL); m != nil && m[1] <= at {
		start = m[1]
	}
	return rawURL[:start] + "xxxxx" + rawURL[at:]
}
