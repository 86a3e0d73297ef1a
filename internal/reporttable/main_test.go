package main

import (
	"strings"
	"testing"

	"github.com/queuekit/queuekit/conformance"
)

func TestTable(t *testing.T) {
	reps := []conformance.Report{
		{Adapter: "a", Results: []conformance.Result{{Property: "roundtrip", Verdict: conformance.Pass}}},
		{Adapter: "b", Results: []conformance.Result{{Property: "roundtrip", Verdict: conformance.Fail, Lost: 3}}},
	}
	var out strings.Builder
	write(&out, reps)
	got := out.String()
	for _, want := range []string{"| property | a | b |", "| roundtrip | pass | fail (lost 3, dup 0, reordered 0) |", "| alo.no-loss | — | — |"} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}
