package semantics

import (
	"fmt"
	"strings"
)

// Guarantee is the delivery guarantee a consumer runs under.
type Guarantee int

const (
	// AtLeastOnce acknowledges a message only after its handler returned
	// nil and asks for redelivery otherwise. Duplicates are possible; loss
	// is not. It is the zero value and the default.
	AtLeastOnce Guarantee = iota
	// AtMostOnce acknowledges a message before its handler runs and never
	// retries it. Loss is possible (a crash or a handler error); duplicates
	// are not.
	AtMostOnce
	// EffectivelyOnce is AtLeastOnce plus an idempotency record keyed by
	// message ID: a redelivered message whose first copy was handled is
	// acknowledged without running the handler again.
	EffectivelyOnce
)

var guaranteeNames = [...]string{
	AtLeastOnce:     "at-least-once",
	AtMostOnce:      "at-most-once",
	EffectivelyOnce: "effectively-once",
}

// String returns the guarantee's name, such as "at-least-once".
func (g Guarantee) String() string {
	if g >= 0 && int(g) < len(guaranteeNames) {
		return guaranteeNames[g]
	}
	return fmt.Sprintf("Guarantee(%d)", int(g))
}

// ParseGuarantee parses a guarantee name as printed by String. It accepts
// "", which means AtLeastOnce, and underscores in place of dashes.
func ParseGuarantee(s string) (Guarantee, error) {
	n := strings.ReplaceAll(strings.ToLower(strings.TrimSpace(s)), "_", "-")
	if n == "" {
		return AtLeastOnce, nil
	}
	for g, name := range guaranteeNames {
		if n == name {
			return Guarantee(g), nil
		}
	}
	return 0, fmt.Errorf("unknown guarantee %q (valid: %s)", s, strings.Join(guaranteeNames[:], ", "))
}

// Ordering says which delivery order a consumer keeps.
type Ordering int

const (
	// Unordered lets concurrent handlers take messages in any order.
	Unordered Ordering = iota
	// PerKey hands messages with the same key to the handler one at a
	// time, in the order the broker delivered them; different keys still
	// run concurrently.
	PerKey
)

// String returns "unordered" or "per-key".
func (o Ordering) String() string {
	switch o {
	case Unordered:
		return "unordered"
	case PerKey:
		return "per-key"
	}
	return fmt.Sprintf("Ordering(%d)", int(o))
}
