package conformance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ReportEnv names the environment variable that makes Run write its JSON
// report: QUEUEKIT_CONFORMANCE_REPORT=<file>. A "{adapter}" in the path is
// replaced by the harness name, so one path serves several adapters.
const ReportEnv = "QUEUEKIT_CONFORMANCE_REPORT"

// Verdict is the outcome of one property.
type Verdict string

const (
	// Pass: the adapter claims what the property needs and kept it.
	Pass Verdict = "pass"
	// Fail: the adapter claims what the property needs and did not keep
	// it (or could not be opened).
	Fail Verdict = "fail"
	// Unsupported: the adapter's Capabilities do not claim what the
	// property needs, so it was not run. Never counted as a pass.
	Unsupported Verdict = "unsupported"
)

// Result is the outcome of one property, with the Ledger's counts. The JSON
// names are stable: other tools read them.
type Result struct {
	// Property is the property's stable name, such as "alo.no-loss".
	Property string `json:"property"`
	// Verdict is pass, fail or unsupported.
	Verdict Verdict `json:"verdict"`
	// Published counts the distinct messages the broker accepted.
	Published int `json:"published"`
	// Handled counts the distinct published messages handled at least once.
	Handled int `json:"handled"`
	// Lost counts published messages never handled.
	Lost int `json:"lost"`
	// Duplicates counts the handlings beyond the first of each message.
	Duplicates int `json:"duplicates"`
	// Reordered counts messages first handled after a later message of the
	// same key.
	Reordered int `json:"reordered"`
	// Detail says why a property failed or is unsupported, and notes what
	// was observed when it passed.
	Detail string `json:"detail"`
	// Elapsed is how long the property ran; not part of the JSON.
	Elapsed time.Duration `json:"-"`
	timing
}

// timing holds the figures some properties measure besides the counts.
type timing struct {
	// Cuts counts the connection cuts (or broker restarts) survived.
	Cuts int `json:"cuts,omitempty"`
	// RecoveryP50Ms and RecoveryMaxMs: from a cut to the next message
	// through (published, or handled), in milliseconds.
	RecoveryP50Ms float64 `json:"recovery_p50_ms,omitempty"`
	RecoveryMaxMs float64 `json:"recovery_max_ms,omitempty"`
	// LatencyP50Ms and LatencyP99Ms: publish to handle at a fixed rate,
	// in milliseconds.
	LatencyP50Ms float64 `json:"latency_p50_ms,omitempty"`
	LatencyP99Ms float64 `json:"latency_p99_ms,omitempty"`
}

// Report is the outcome of a suite run against one adapter; its JSON form is
// the report that Run writes.
type Report struct {
	// Adapter is Harness.Name.
	Adapter string `json:"adapter"`
	// Results holds one entry per property run, in suite order.
	Results []Result `json:"results"`
}

// Result returns the result of property, if the report has one.
func (r Report) Result(property string) (Result, bool) {
	for _, res := range r.Results {
		if res.Property == property {
			return res, true
		}
	}
	return Result{}, false
}

// Verdicts returns the properties of the report grouped by verdict.
func (r Report) Verdicts() map[Verdict][]string {
	m := make(map[Verdict][]string)
	for _, res := range r.Results {
		m[res.Verdict] = append(m[res.Verdict], res.Property)
	}
	return m
}

// OK reports whether no property failed. Unsupported properties do not make
// a report fail, but they are not passes either: look at Verdicts.
func (r Report) OK() bool {
	for _, res := range r.Results {
		if res.Verdict == Fail {
			return false
		}
	}
	return true
}

// WriteFile writes r as indented JSON to path, atomically (a temporary file
// renamed into place).
func (r Report) WriteFile(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("conformance: writing report: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("conformance: writing report: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("conformance: writing report: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("conformance: writing report: %w", err)
	}
	return nil
}

// ReadReport reads a report written by Run or WriteFile.
func ReadReport(path string) (Report, error) {
	var r Report
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("conformance: %s is not a conformance report: %w", path, err)
	}
	return r, nil
}

// written remembers, per resolved report path, the report this process
// wrote there, so that several Run calls in one test binary merge rather than
// clobber each other.
var (
	writtenMu sync.Mutex
	written   = map[string]*Report{}
)

// reportPath resolves the report path for adapter: "{adapter}" becomes the
// adapter's name (made safe for a file name).
func reportPath(path, adapter string) string {
	return strings.ReplaceAll(path, "{adapter}", fileSafe(adapter))
}

// recordReport writes rep to path, merging with what this process wrote
// there before:
//
//   - the same adapter again (a second Run, or -count=2): results are
//     merged by property, the newer result replacing the older;
//   - another adapter: the report goes to a sibling file named
//     <path without extension>.<adapter><extension> instead, because the
//     report format holds one adapter; the returned path says where.
//
// A file left by an earlier process is overwritten, never merged.
func recordReport(path string, rep Report) (string, error) {
	path = reportPath(path, rep.Adapter)
	writtenMu.Lock()
	defer writtenMu.Unlock()
	if prev, ok := written[path]; ok && prev.Adapter != rep.Adapter {
		ext := filepath.Ext(path)
		path = strings.TrimSuffix(path, ext) + "." + fileSafe(rep.Adapter) + ext
	}
	merged := rep
	if prev, ok := written[path]; ok {
		merged = mergeReports(*prev, rep)
	} else if len(rep.Results) < len(properties) {
		// A partial run (RunOnly) of its own: it updates the report a
		// whole run wrote before, rather than replacing it.
		if old, err := ReadReport(path); err == nil && old.Adapter == rep.Adapter {
			merged = mergeReports(old, rep)
		}
	}
	if err := merged.WriteFile(path); err != nil {
		return path, err
	}
	written[path] = &merged
	return path, nil
}

// mergeReports returns old with the results of newer replacing those of the
// same property and the others appended.
func mergeReports(old, newer Report) Report {
	out := Report{Adapter: newer.Adapter, Results: append([]Result(nil), old.Results...)}
	for _, res := range newer.Results {
		replaced := false
		for i := range out.Results {
			if out.Results[i].Property == res.Property {
				out.Results[i] = res
				replaced = true
				break
			}
		}
		if !replaced {
			out.Results = append(out.Results, res)
		}
	}
	return out
}

func fileSafe(s string) string {
	if s == "" {
		return "unnamed"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, s)
}
