// Command reporttable turns conformance JSON reports (one per adapter, as
// QUEUEKIT_CONFORMANCE_REPORT writes them) into the Markdown table of the
// README: one row per property, one column per adapter, and the fault
// figures (cuts, recovery, latency) where a property measured them.
//
//	QUEUEKIT_CONFORMANCE_REPORT='/tmp/qk/{adapter}.json' go test -run TestConformance ./adapters/...
//	go run ./internal/reporttable /tmp/qk/*.json
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/queuekit/queuekit/conformance"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: reporttable REPORT.json...")
		os.Exit(2)
	}
	var reps []conformance.Report
	for _, path := range os.Args[1:] {
		r, err := conformance.ReadReport(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "reporttable: %v\n", err)
			os.Exit(1)
		}
		reps = append(reps, r)
	}
	write(os.Stdout, reps)
}

// write prints the table of reps, properties in the suite's order.
func write(w io.Writer, reps []conformance.Report) {
	fmt.Fprint(w, "| property |")
	for _, r := range reps {
		fmt.Fprintf(w, " %s |", r.Adapter)
	}
	fmt.Fprint(w, "\n|---|")
	for range reps {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
	for _, name := range conformance.PropertyNames() {
		fmt.Fprintf(w, "| %s |", name)
		for _, r := range reps {
			res, ok := r.Result(name)
			if !ok {
				fmt.Fprint(w, " — |")
				continue
			}
			fmt.Fprintf(w, " %s |", cell(res))
		}
		fmt.Fprintln(w)
	}
}

// cell is a result in a few words: the verdict, and the figures a fault
// or latency property measured.
func cell(res conformance.Result) string {
	var b strings.Builder
	b.WriteString(string(res.Verdict))
	var figs []string
	if res.Cuts > 0 {
		figs = append(figs, fmt.Sprintf("%d cuts, recovery p50 %.0f / max %.0f ms", res.Cuts, res.RecoveryP50Ms, res.RecoveryMaxMs))
	}
	if res.LatencyP50Ms > 0 {
		figs = append(figs, fmt.Sprintf("p50 %.1f / p99 %.1f ms", res.LatencyP50Ms, res.LatencyP99Ms))
	}
	if res.Verdict == conformance.Fail {
		figs = append(figs, fmt.Sprintf("lost %d, dup %d, reordered %d", res.Lost, res.Duplicates, res.Reordered))
	}
	if res.Duplicates > 0 && res.Verdict == conformance.Pass {
		figs = append(figs, fmt.Sprintf("%d dup", res.Duplicates))
	}
	if len(figs) > 0 {
		b.WriteString(" (" + strings.Join(figs, "; ") + ")")
	}
	return b.String()
}
