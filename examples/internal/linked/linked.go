// Package linked tells a user of the examples how to get the adapter a
// broker URL names when it is not compiled in. The examples link only the
// embedded mem:// broker unless they are built with -tags allbrokers, so
// that their first run downloads and compiles no broker SDK.
package linked

import (
	"fmt"
	"slices"
	"strings"

	"github.com/queuekit/queuekit/broker"
)

// Tag is the build tag that links every adapter into the examples.
const Tag = "allbrokers"

// Check returns nil when the adapter of rawURL's scheme is linked in (or
// rawURL has no scheme: broker.Open says what is wrong with it), and
// otherwise an error that names the build tag, for the example whose
// package path is pkg (such as "./examples/orders").
func Check(rawURL, pkg string) error {
	scheme, _, ok := strings.Cut(rawURL, "://")
	if !ok || scheme == "" {
		return nil
	}
	linked := broker.Schemes()
	if slices.Contains(linked, scheme) {
		return nil
	}
	return fmt.Errorf("no adapter for %s:// in this build, which links %s:// only (so that it compiles no broker SDK); "+
		"build with -tags %s for every adapter: go run -tags %s %s -broker '%s'",
		scheme, strings.Join(linked, "://, "), Tag, Tag, pkg, broker.Redact(rawURL))
}
