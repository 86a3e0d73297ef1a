package conformance

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

func TestReportJSONNames(t *testing.T) {
	b, err := json.Marshal(Report{Adapter: "memory", Results: []Result{{Property: "alo.no-loss", Verdict: Pass,
		Published: 1000, Handled: 1000, Duplicates: 12}}})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"adapter":"memory","results":[{"property":"alo.no-loss","verdict":"pass","published":1000,"handled":1000,"lost":0,"duplicates":12,"reordered":0,"detail":""}]}`
	if string(b) != want {
		t.Errorf("JSON\n got %s\nwant %s", b, want)
	}
}

func TestRecordReportMergesAndSeparates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "r.json")
	mem1 := Report{Adapter: "memory", Results: []Result{{Property: "roundtrip", Verdict: Fail}, {Property: "alo.no-loss", Verdict: Pass}}}
	mem2 := Report{Adapter: "memory", Results: []Result{{Property: "roundtrip", Verdict: Pass}, {Property: "group.fanout", Verdict: Pass}}}
	kafka := Report{Adapter: "kafka/franz go", Results: []Result{{Property: "roundtrip", Verdict: Pass}}}

	for _, r := range []Report{mem1, mem2} {
		if where, err := recordReport(path, r); err != nil || where != path {
			t.Fatalf("recordReport = %s, %v; want %s", where, err, path)
		}
	}
	got, err := ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range got.Results {
		names = append(names, r.Property+"="+string(r.Verdict))
	}
	if s := strings.Join(names, " "); s != "roundtrip=pass alo.no-loss=pass group.fanout=pass" {
		t.Errorf("merged results %s", s)
	}

	where, err := recordReport(path, kafka)
	if want := filepath.Join(dir, "r.kafka_franz_go.json"); err != nil || where != want {
		t.Fatalf("another adapter went to %s (%v), want %s", where, err, want)
	}
	if got, _ := ReadReport(path); got.Adapter != "memory" {
		t.Errorf("the memory report was overwritten by %s", got.Adapter)
	}

	where, err = recordReport(filepath.Join(dir, "{adapter}.json"), kafka)
	if want := filepath.Join(dir, "kafka_franz_go.json"); err != nil || where != want {
		t.Errorf("{adapter} path resolved to %s (%v), want %s", where, err, want)
	}
}

func TestCheckRejectsBadInput(t *testing.T) {
	if _, err := Check(t.Context(), Harness{Name: "x"}); err == nil || !strings.Contains(err.Error(), "Open") {
		t.Errorf("Check without Open: err = %v", err)
	}
	h := Harness{Name: "x", Open: brokenHarness(t, brokenCase{}).Open}
	if _, err := Check(t.Context(), h, "alo.no-loss", "exactly-once"); err == nil || !strings.Contains(err.Error(), "alo.no-loss") {
		t.Errorf("Check with an unknown property: err = %v, want one listing the known ones", err)
	}
}

func TestPropertiesIncludeDesignNames(t *testing.T) {
	for _, name := range []string{"roundtrip", "alo.nack-redelivers", "alo.crash-redelivers", "alo.no-loss", "amo.no-redelivery",
		"group.competing", "group.fanout", "order.per-key", "nack.delay", "dlq.after-max-attempts",
		"close.publisher-flush", "close.graceful-consume"} {
		if _, ok := propertyByName(name); !ok {
			t.Errorf("property %s of DESIGN.md is missing", name)
		}
	}
	seen := map[string]bool{}
	for _, p := range Properties() {
		if seen[p.Name] || p.Checks == "" {
			t.Errorf("property %q duplicated or undocumented", p.Name)
		}
		seen[p.Name] = true
	}
}
