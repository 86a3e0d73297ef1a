package conformance

import (
	"strings"
	"testing"
)

func TestLedgerFindsLossDuplicatesAndReordering(t *testing.T) {
	l := NewLedger()
	for _, m := range []struct{ id, key string }{{"a1", "a"}, {"a2", "a"}, {"a3", "a"}, {"b1", "b"}, {"b2", "b"}} {
		l.Published(m.id, m.key)
	}
	l.Published("a1", "a") // a republish of the same id is one message
	for _, id := range []string{"a1", "a3", "a2", "b1", "b1"} {
		l.Delivered(id)
		l.Handled(id)
	}
	l.Handled("zz")
	r := l.Report()
	if r.Published != 5 || r.Handled != 4 || r.Delivered != 5 {
		t.Fatalf("counts: %+v", r)
	}
	if got := strings.Join(r.Lost, ","); got != "b2" {
		t.Errorf("lost = %q, want b2", got)
	}
	if r.Duplicates != 1 || strings.Join(r.DuplicateIDs, ",") != "b1" {
		t.Errorf("duplicates = %d %v, want 1 [b1]", r.Duplicates, r.DuplicateIDs)
	}
	if got := strings.Join(r.Reordered, ","); got != "a2" {
		t.Errorf("reordered = %q, want a2", got)
	}
	if got := strings.Join(r.Unexpected, ","); got != "zz" {
		t.Errorf("unexpected = %q, want zz", got)
	}
	if r.OK() {
		t.Error("OK() = true for a report with problems")
	}
	for _, want := range []string{"lost 1 of 5: ids b2", "1 duplicates of 1 ids: b1", "reordered 1: ids a2"} {
		if !strings.Contains(r.String(), want) {
			t.Errorf("String() = %q, missing %q", r.String(), want)
		}
	}
}

func TestLedgerCleanRun(t *testing.T) {
	l := NewLedger()
	l.Published("1", "k")
	l.Published("2", "k")
	l.Handled("1")
	l.Handled("2")
	if r := l.Report(); !r.OK() || r.Handled != 2 {
		t.Fatalf("clean run reported problems: %v", r)
	}
}

func TestSample(t *testing.T) {
	if got := Sample([]string{"a", "b", "c"}, 2); got != "a, b (and 1 more)" {
		t.Errorf("Sample = %q", got)
	}
}
