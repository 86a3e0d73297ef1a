package conformance_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/semantics"
)

func openMemory(context.Context) (*broker.Broker, error) {
	return broker.New(memory.New(memory.Options{})), nil
}

// TestMemoryConformance is what every adapter's test looks like: the honest
// memory adapter must pass every property (it claims every capability).
// It runs eight properties at once (Harness.Parallel), as the SQS and
// Pub/Sub tests do, so that an honest adapter is seen to pass them that
// way too; the memory adapter's own test runs them one after the other.
func TestMemoryConformance(t *testing.T) {
	conformance.Run(t, conformance.Harness{
		// Not "memory": with QUEUEKIT_CONFORMANCE_REPORT set for a whole
		// run, this report would replace the adapter's own.
		Name:       "memory-suite-self-test",
		Open:       openMemory,
		AckTimeout: time.Second,
		Parallel:   8,
	})
}

// hidden claims no capability.
type hidden struct{ *memory.Broker }

func (hidden) Capabilities() semantics.Capabilities { return semantics.Capabilities{} }

// TestRunReportsAndSkips runs Run in a child test process against an
// adapter that claims nothing, with the report variable set, and checks the
// child's verdicts, its skip messages and the JSON it wrote: once with the
// properties one after the other, once with Harness.Parallel 4 (whose
// report must list them in the same order).
func TestRunReportsAndSkips(t *testing.T) {
	if parallel, err := strconv.Atoi(os.Getenv("QUEUEKIT_CONFORMANCE_CHILD")); err == nil {
		conformance.Run(t, conformance.Harness{
			Name: "claims-nothing",
			Open: func(ctx context.Context) (*broker.Broker, error) {
				return broker.New(hidden{memory.New(memory.Options{})}), nil
			},
			AckTimeout: time.Second,
			Messages:   100,
			Parallel:   parallel,
		})
		return
	}
	for _, parallel := range []int{1, 4} {
		t.Run(fmt.Sprint("parallel=", parallel), func(t *testing.T) {
			t.Parallel() // a child process and report file of its own
			runReportsAndSkips(t, parallel)
		})
	}
}

func runReportsAndSkips(t *testing.T, parallel int) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRunReportsAndSkips$", "-test.v")
	cmd.Env = append(os.Environ(), "QUEUEKIT_CONFORMANCE_CHILD="+strconv.Itoa(parallel),
		conformance.ReportEnv+"="+filepath.Join(dir, "report-{adapter}.json"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child run failed: %v\n%s", err, out)
	}
	rep, err := conformance.ReadReport(filepath.Join(dir, "report-claims-nothing.json"))
	if err != nil {
		t.Fatalf("%v\nchild output:\n%s", err, out)
	}
	if rep.Adapter != "claims-nothing" || len(rep.Results) != len(conformance.Properties()) {
		t.Fatalf("report for %q with %d results, want claims-nothing with %d", rep.Adapter, len(rep.Results), len(conformance.Properties()))
	}
	for i, p := range conformance.Properties() {
		if got := rep.Results[i].Property; got != p.Name {
			t.Errorf("report result %d is %s, want %s (the order the properties are listed in)", i, got, p.Name)
		}
		res, ok := rep.Result(p.Name)
		if !ok {
			t.Errorf("no result for %s", p.Name)
			continue
		}
		switch {
		case p.Hook != "":
			if res.Verdict != conformance.Unsupported || !strings.Contains(res.Detail, "refused") {
				t.Errorf("%s: verdict %s (%s), want unsupported: the harness has no %s", p.Name, res.Verdict, res.Detail, p.Hook)
			}
		case p.Needs == "" && res.Verdict != conformance.Pass:
			t.Errorf("%s: verdict %s (%s), want pass", p.Name, res.Verdict, res.Detail)
		case p.Needs != "" && res.Verdict != conformance.Unsupported:
			t.Errorf("%s: verdict %s, want unsupported: it needs %s, which the adapter does not claim", p.Name, res.Verdict, p.Needs)
		case p.Needs != "":
			skip := "--- SKIP: TestRunReportsAndSkips/" + p.Name
			if !strings.Contains(string(out), skip) || !strings.Contains(res.Detail, p.Needs) {
				t.Errorf("%s: want a %q line and a detail naming %s; detail %q", p.Name, skip, p.Needs, res.Detail)
			}
		}
	}
	if !strings.Contains(string(out), "unsupported: the adapter does not claim") {
		t.Errorf("child output has no \"unsupported:\" skip message:\n%s", out)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "report-claims-nothing.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"adapter"`, `"results"`, `"property"`, `"verdict"`, `"published"`, `"handled"`, `"lost"`, `"duplicates"`, `"reordered"`, `"detail"`} {
		if !strings.Contains(string(raw), field) {
			t.Errorf("report has no %s field:\n%s", field, raw)
		}
	}
}

// RunOnly runs the named properties and, with the report variable set,
// updates the report an earlier whole run wrote: its results replace those
// of the same properties, the others stay.
func TestRunOnlyUpdatesTheReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.json")
	old := conformance.Report{Adapter: "memory-run-only", Results: []conformance.Result{
		{Property: "roundtrip", Verdict: conformance.Fail, Detail: "stale"},
		{Property: "ack.idempotent", Verdict: conformance.Pass, Detail: "kept"},
	}}
	if err := old.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	t.Setenv(conformance.ReportEnv, path)
	conformance.RunOnly(t, conformance.Harness{Name: "memory-run-only", Open: openMemory, AckTimeout: time.Second}, "roundtrip")
	rep, err := conformance.ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := rep.Result("roundtrip"); res.Verdict != conformance.Pass {
		t.Errorf("roundtrip = %s (%s) after RunOnly, want its new pass", res.Verdict, res.Detail)
	}
	if res, _ := rep.Result("ack.idempotent"); res.Detail != "kept" || len(rep.Results) != 2 {
		t.Errorf("report = %+v, want ack.idempotent kept from the earlier run and 2 results", rep.Results)
	}
}
