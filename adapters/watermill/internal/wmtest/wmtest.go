// Package wmtest runs the conformance suite through the Watermill bridge
// and checks the verdicts measured for a backend, for the tests of
// adapters/watermill and its subpackages.
package wmtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/semantics"
)

// Suite is one backend's conformance run.
type Suite struct {
	// Harness runs the suite with the backend's honest claims.
	Harness conformance.Harness
	// Expected is the verdict measured for each property; a property not
	// listed must pass or be unsupported as the claims say.
	Expected map[string]conformance.Verdict
	// Unclaimed lists properties whose capability the backend does not
	// claim but whose failure is worth measuring: each is run again with
	// the broker OpenClaimingAll opens, in parallel with the suite, and
	// must fail (or the claim is being withheld for nothing). Their
	// Timeout is UnclaimedTimeout.
	Unclaimed        []string
	OpenClaimingAll  func(ctx context.Context) (*broker.Broker, error)
	UnclaimedTimeout time.Duration
}

// ClaimAll returns caps with every claim the bridge lets a backend make
// (see watermill.Options.Capabilities), for Suite.OpenClaimingAll.
func ClaimAll(caps semantics.Capabilities) semantics.Capabilities {
	caps.ConsumerGroups, caps.FanOut, caps.PerKeyOrdering, caps.CrashRedelivery = true, true, true, true
	return caps
}

// Run runs s: the suite with the honest claims (conformance.Check, so that
// the failures expected of the backend do not fail the test) and, at the
// same time, each Unclaimed property with every capability claimed. It
// fails t when a verdict differs from the expected one, writes the report
// to QUEUEKIT_CONFORMANCE_REPORT (with "{adapter}" replaced by the harness
// name, or ".<name>" inserted before the extension when it has none), and
// returns it. The report keeps the honest verdicts; an unclaimed property's
// detail says what happened when it was claimed anyway.
func Run(t *testing.T, s Suite) conformance.Report {
	t.Helper()
	if len(s.Unclaimed) > 0 && s.OpenClaimingAll == nil {
		t.Fatal("wmtest: Suite.Unclaimed needs Suite.OpenClaimingAll")
	}
	ctx := t.Context()
	claimed := make([]conformance.Result, len(s.Unclaimed))
	var wg sync.WaitGroup
	for i, prop := range s.Unclaimed {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := s.Harness
			h.Timeout = s.UnclaimedTimeout
			h.Open = s.OpenClaimingAll
			rep, err := conformance.Check(ctx, h, prop)
			if err != nil || len(rep.Results) != 1 {
				claimed[i] = conformance.Result{Property: prop, Verdict: conformance.Fail, Detail: fmt.Sprintf("check: %v", err)}
				return
			}
			claimed[i] = rep.Results[0]
		}()
	}
	rep, err := conformance.Check(ctx, s.Harness)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	caps := capabilities(t, s.Harness)
	needs, hooks := map[string]string{}, map[string]string{}
	for _, p := range conformance.Properties() {
		needs[p.Name], hooks[p.Name] = p.Needs, p.Hook
	}
	for _, r := range rep.Results {
		want, ok := s.Expected[r.Property]
		if !ok {
			want = conformance.Pass
			// Fault hooks (a proxy address, a restart, the default URL)
			// are not given for bridged backends.
			if !claims(caps, needs[r.Property]) || hooks[r.Property] != "" {
				want = conformance.Unsupported
			}
		}
		if r.Verdict != want {
			t.Errorf("%s: verdict %s, measured before as %s: %s", r.Property, r.Verdict, want, r.Detail)
		} else {
			t.Logf("%-24s %-11s %v: %s", r.Property, r.Verdict, r.Elapsed.Round(1e6), r.Detail)
		}
	}
	for i, prop := range s.Unclaimed {
		c := claimed[i]
		if c.Verdict != conformance.Fail {
			t.Errorf("%s held when claimed (%s: %s): the backend may deserve the claim", prop, c.Verdict, c.Detail)
			continue
		}
		t.Logf("%-24s fails when claimed anyway: %s", prop, c.Detail)
		for j := range rep.Results {
			if rep.Results[j].Property == prop {
				rep.Results[j].Detail += "; when claimed anyway it fails: " + c.Detail
			}
		}
	}
	if path := os.Getenv(conformance.ReportEnv); path != "" {
		path = reportPath(path, rep.Adapter)
		if err := rep.WriteFile(path); err != nil {
			t.Errorf("%s: %v", conformance.ReportEnv, err)
		} else {
			t.Logf("conformance report for %s written to %s", rep.Adapter, path)
		}
	}
	return rep
}

// capabilities opens the harness's broker once for its claims.
func capabilities(t *testing.T, h conformance.Harness) semantics.Capabilities {
	t.Helper()
	b, err := h.Open(t.Context())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer b.Close(context.WithoutCancel(t.Context()))
	return b.Capabilities()
}

// claims reports whether caps makes the claim named need (fields of
// semantics.Capabilities joined by " and ", as conformance.Property.Needs
// names them).
func claims(caps semantics.Capabilities, need string) bool {
	if need == "" {
		return true
	}
	if a, b, ok := strings.Cut(need, " and "); ok {
		return claims(caps, a) && claims(caps, b)
	}
	f := reflect.ValueOf(caps).FieldByName(need)
	switch f.Kind() {
	case reflect.Bool:
		return f.Bool()
	case reflect.Int:
		return f.Int() > 0
	}
	panic("wmtest: conformance needs unknown capability " + need)
}

func reportPath(path, adapter string) string {
	if strings.Contains(path, "{adapter}") {
		return strings.ReplaceAll(path, "{adapter}", adapter)
	}
	ext := filepath.Ext(path)
	return strings.TrimSuffix(path, ext) + "." + adapter + ext
}
