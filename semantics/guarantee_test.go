package semantics

import (
	"strings"
	"testing"
)

func TestParseGuarantee(t *testing.T) {
	for in, want := range map[string]Guarantee{"": AtLeastOnce, "at-most-once": AtMostOnce, "EFFECTIVELY_ONCE": EffectivelyOnce} {
		got, err := ParseGuarantee(in)
		if err != nil || got != want {
			t.Errorf("ParseGuarantee(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseGuarantee("exactly-once"); err == nil || !strings.Contains(err.Error(), "at-least-once") {
		t.Errorf("ParseGuarantee(exactly-once) error = %v, want one listing the valid names", err)
	}
}
